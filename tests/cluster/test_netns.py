"""Three worker hosts in network namespaces: a partition and a slow link, judged like the crash suite.

Pytest-sized (100 deliveries per fault, enough that host 1 joins the burst before the others drain it);
``python -m tests.cluster`` runs the full suite. Needs root and ``ip netns``: skipped with the reason
elsewhere. Namespaces, veths, qdiscs and worker processes are removed in ``finally``, stale ones at start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.cluster import netns
from tests.cluster.pgbouncer import available
from tests.cluster.scenarios import run_scenario
from tests.cluster.services import JOB_TIMEOUT_SECONDS, STUCK_AFTER_SECONDS, Services

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    """The namespaces and the services on the bridge address, for this module only (one run per machine)."""
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    if not available():
        pytest.skip("pgbouncer is not installed (apt-get install -y pgbouncer)")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(netns.exclusive())
        except netns.Busy as exc:
            pytest.skip(str(exc))
        try:
            netns.create()
            found = Services()
            try:
                found.start()
                yield found
            finally:
                found.close()
        finally:
            netns.cleanup()
        assert netns.leftovers() == []


def test_a_second_cluster_run_waits_for_the_one_holding_the_namespaces() -> None:
    """The names and subnet are machine-wide: while one run holds the lock, another gets ``Busy``, not the hosts."""
    with netns.exclusive(timeout=5), pytest.raises(netns.Busy), netns.exclusive(timeout=0.2):
        pass  # never reached: the lock is held above
    with netns.exclusive(timeout=5):
        pass  # released on exit: the next run gets it


def test_a_partitioned_hosts_claims_come_back_through_the_dead_worker_reclaim(
    services: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    """Host 1's link drops mid-DATA: its alive key lapses, the others reclaim and deliver what it held.

    With the stuck timeout at its 900 s default only the dead-worker reclaim can free those claims within
    the test; nothing is lost, the only duplicates are what the provider accepted before the cut, and after
    the heal host 1 overwrites nothing.
    """
    outcome = run_scenario("partition", deliveries=100, services=services)
    with capsys.disabled():
        print("\n" + outcome.line())
    assert outcome.lost == 0, outcome.line()
    assert outcome.held >= 1 and outcome.reclaimed == outcome.held, outcome.line()
    assert outcome.alive_lapse_seconds <= JOB_TIMEOUT_SECONDS + 2, outcome.line()
    assert outcome.recovery_seconds < 60 < STUCK_AFTER_SECONDS, outcome.line()
    assert outcome.forced >= 1, "the cut struck after the provider accepted host 1's third message"
    assert outcome.duplicates <= outcome.forced, outcome.line()
    assert outcome.notes == [], outcome.line()


def test_a_slow_host_still_delivers_and_the_fleet_loses_nothing(
    services: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    """Host 2 with 50 ms added to everything it sends: its deliveries complete, none lost or doubled."""
    outcome = run_scenario("slow", deliveries=100, services=services)
    with capsys.disabled():
        print("\n" + outcome.line())  # the fleet's throughput (rate=) with one slow host
    assert outcome.lost == 0 and outcome.duplicates == 0, outcome.line()
    assert outcome.per_host.get("host2", 0) >= 1, outcome.line()
