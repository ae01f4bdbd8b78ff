"""Three worker hosts in network namespaces: a partition and a slow link, judged like the crash suite.

Pytest-sized (40 deliveries per fault); ``python -m tests.cluster`` runs the full suite. Needs root
and ``ip netns``: skipped with the reason elsewhere. Namespaces, veths, qdiscs and worker processes are
removed in ``finally`` and any stale ones at start.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster import netns
from tests.cluster.pgbouncer import available
from tests.cluster.scenarios import run_scenario
from tests.cluster.services import Services

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    """The namespaces and the services on the bridge address, for this module only."""
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    if not available():
        pytest.skip("pgbouncer is not installed (apt-get install -y pgbouncer)")
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


def test_a_partitioned_host_loses_nothing_and_duplicates_only_what_the_provider_accepted(services: Services) -> None:
    """Host 1's link drops mid-DATA: its claim is reclaimed by the others; after the heal nothing is overwritten."""
    outcome = run_scenario("partition", deliveries=40, services=services)
    assert outcome.lost == 0, outcome.line()
    assert outcome.forced >= 1, "the fault struck after the provider accepted: one forced duplicate at most"
    assert outcome.duplicates <= outcome.forced, outcome.line()
    assert outcome.notes == [], outcome.line()


def test_a_slow_host_still_delivers_and_the_fleet_loses_nothing(services: Services) -> None:
    """Host 2 with 50 ms added to everything it sends: its deliveries complete, none lost or doubled."""
    outcome = run_scenario("slow", deliveries=60, services=services)
    assert outcome.lost == 0 and outcome.duplicates == 0, outcome.line()
    assert outcome.per_host.get("host2", 0) >= 1, outcome.line()
