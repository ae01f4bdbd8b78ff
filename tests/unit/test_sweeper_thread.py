"""The sweeper thread: periodic, survives failures, stops with the worker; and the queue-depth hysteresis."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import fakeredis
import pytest

from alert_worker.producer import QueueAdmission, QueueFullError
from alert_worker.sweep import SweeperThread
from tests.support.processes import wait_until


def test_the_sweeper_keeps_sweeping_after_a_failed_pass_and_stops_when_asked() -> None:
    """A raising pass is logged; the next one still runs; stop() ends the daemon thread."""
    calls: list[int] = []

    def sweep() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("postgres went away")

    thread = SweeperThread(interval_seconds=0.01, sweep=sweep)
    assert thread.daemon
    thread.start()
    wait_until(lambda: len(calls) >= 3, timeout=10, what="three passes")
    thread.stop(timeout_seconds=5)
    assert not thread.is_alive()


class WatchedStop(threading.Event):
    """The sweeper's stop event, telling the test when (and for how long) the thread first waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        self.waiting.set()
        return super().wait(timeout)


def test_the_sweeper_waits_one_interval_before_its_first_pass() -> None:
    """Start-up already reconciled the gauges; the first sweep comes an interval later.

    The test stops the thread only once it is inside that first wait: stopping right after start()
    could end it before run() began and prove nothing.
    """
    ran = threading.Event()
    stopping = WatchedStop()
    thread = SweeperThread(interval_seconds=3600, sweep=ran.set, stopping=stopping)
    thread.start()
    assert stopping.waiting.wait(timeout=10), "the thread never reached its first wait"
    thread.stop(timeout_seconds=5)
    assert stopping.timeouts == [3600] and not ran.is_set() and not thread.is_alive()


@pytest.fixture
def client() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield client
    client.close()


@pytest.mark.parametrize(
    ("depths", "verdicts"),
    [
        ([0, 100, 100], ["ok", "ok", "ok"]),
        ([101, 95, 90, 89, 95], ["full", "full", "full", "ok", "ok"]),
        ([101, 50, 101], ["full", "ok", "full"]),
    ],
    ids=["at-the-limit-is-fine", "refuses-until-below-90-percent", "refuses-again-when-over"],
)
def test_queue_admission_refuses_over_the_limit_with_hysteresis(
    client: fakeredis.FakeRedis, depths: list[int], verdicts: list[str]
) -> None:
    """Max 100: over it refuses; accepting resumes only below 90."""
    admission = QueueAdmission(client=client, prefix="alert:", max_depth=100)
    seen = []
    for depth in depths:
        client.set("alert:queue:depth", depth)
        try:
            admission.check()
            seen.append("ok")
        except QueueFullError as exc:
            assert exc.resume_below == 90
            seen.append("full")
    assert seen == verdicts
