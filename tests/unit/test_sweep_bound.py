"""A sweep pass always ends, even when the store keeps handing back rows it already gave (grace 0)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from alert_worker.store import RecoveredDelivery
from alert_worker.sweep import sweep_once
from tests.support.fakes import FakeGauge

STAMP = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def _row(n: int) -> RecoveredDelivery:
    return RecoveredDelivery(id=f"r-{n}", channel="email", payload=None, queue="alerts", attempts=0, stamp=STAMP)


class EndlessStore:
    """What Postgres does with no grace: every statement returns the same full batch again."""

    def __init__(self, batch: list[RecoveredDelivery]) -> None:
        self.batch = batch
        self.calls = 0

    def pending_queues(self) -> list[str]:
        return []

    def take_overdue(self, **_: Any) -> list[RecoveredDelivery]:
        self.calls += 1
        return list(self.batch)

    def counts(self) -> dict[str, int]:
        return {"pending": 2, "in_progress": 0, "poison": 0}


class FloodStore(EndlessStore):
    """A backlog bigger than a pass: always a full batch of new rows."""

    def take_overdue(self, **_: Any) -> list[RecoveredDelivery]:
        self.calls += 1
        return [_row(self.calls * 10 + i) for i in range(2)]


class RecordingEnqueuer:
    def __init__(self) -> None:
        self.enqueued: list[str] = []

    def oldest_queued_at(self, queue: str) -> None:
        return None

    def enqueue_recovered(self, row: RecoveredDelivery, *, kind: str) -> bool:
        self.enqueued.append(row.id)
        return True


def test_a_pass_stops_at_the_first_row_it_already_took() -> None:
    """Grace 0 made stamped rows eligible again at once: each row is enqueued once and the pass ends."""
    store, enqueuer = EndlessStore([_row(1), _row(2)]), RecordingEnqueuer()
    report = sweep_once(
        store=store, enqueuer=enqueuer, queue_depth=FakeGauge(), poison_gauge=FakeGauge(), grace_seconds=0, batch_size=2
    )
    assert enqueuer.enqueued == ["r-1", "r-2"] and report.requeued == 2 and store.calls == 2


def test_a_pass_takes_at_most_max_batches_of_a_large_backlog() -> None:
    """The rest waits for the next pass: one pass never runs unbounded."""
    store, enqueuer = FloodStore([]), RecordingEnqueuer()
    report = sweep_once(
        store=store,
        enqueuer=enqueuer,
        queue_depth=FakeGauge(),
        poison_gauge=FakeGauge(),
        grace_seconds=60,
        batch_size=2,
        max_batches=3,
    )
    assert store.calls == 3 and report.requeued == 6
