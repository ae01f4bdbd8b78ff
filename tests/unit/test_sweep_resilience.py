"""One failing part of a sweep pass never stops the rest of it (docs/contract.md §6.1, dead-worker reclaim)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from alert_worker.store import RecoveredDelivery
from alert_worker.sweep import sweep_once
from tests.support.fakes import FakeGauge

STAMP = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def _row(name: str) -> RecoveredDelivery:
    return RecoveredDelivery(id=name, channel="email", payload=None, queue="alerts", attempts=0, stamp=STAMP)


class Store:
    """Hands back ``rows`` once; fails while the dead-worker reclaim is asked for, if told to."""

    def __init__(self, rows: list[RecoveredDelivery], *, dead_reclaim_fails: bool = False) -> None:
        self.rows = rows
        self.dead_reclaim_fails = dead_reclaim_fails
        self.calls: list[bool] = []  # per call: was the dead-worker reclaim asked for
        self.asked: list[bool] = []  # what claimant_alive answered, per claimant

    def pending_queues(self) -> list[str]:
        return []

    def take_overdue(self, *, claimant_alive: Callable[[str], bool] | None = None, **_: Any) -> list[RecoveredDelivery]:
        self.calls.append(claimant_alive is not None)
        if claimant_alive is not None:
            self.asked.append(claimant_alive("w-1"))
            if self.dead_reclaim_fails:
                raise RuntimeError("null value in column attempts violates not-null constraint")
        rows, self.rows = self.rows, []
        return rows

    def counts(self) -> dict[str, int]:
        return {"pending": 3, "in_progress": 1, "poison": 2}


class Enqueuer:
    def __init__(self, *, failing: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.failing = failing
        self.enqueued: list[str] = []

    def oldest_queued_at(self, queue: str) -> None:
        return None

    def enqueue_recovered(self, row: RecoveredDelivery, *, kind: str) -> bool:
        if row.id in self.failing:
            raise ConnectionError("enqueue failed")
        self.enqueued.append(row.id)
        return True


def _sweep(store: Store, enqueuer: Enqueuer, *, claimant_alive: Callable[[str], bool] | None) -> tuple[int, FakeGauge]:
    poison = FakeGauge()
    report = sweep_once(
        store=store,
        enqueuer=enqueuer,
        queue_depth=FakeGauge(),
        poison_gauge=poison,
        grace_seconds=60,
        claimant_alive=claimant_alive,
    )
    return report.requeued, poison


def test_a_row_whose_enqueue_fails_does_not_stop_the_rows_after_it() -> None:
    store, enqueuer = Store([_row("a"), _row("bad"), _row("c")]), Enqueuer(failing={"bad"})
    requeued, poison = _sweep(store, enqueuer, claimant_alive=None)
    assert enqueuer.enqueued == ["a", "c"] and requeued == 2
    assert poison.value == 2  # the pass went on to reconcile the gauges


def test_a_batch_failing_with_the_dead_worker_reclaim_is_taken_again_without_it() -> None:
    """Pending and stuck rows still move when the dead-worker part of the statement fails."""
    store, enqueuer = Store([_row("stuck"), _row("pending")], dead_reclaim_fails=True), Enqueuer()
    requeued, poison = _sweep(store, enqueuer, claimant_alive=lambda name: False)
    assert store.calls == [True, False]
    assert enqueuer.enqueued == ["stuck", "pending"] and requeued == 2 and poison.value == 2


def test_a_batch_that_fails_either_way_ends_the_batches_but_not_the_pass() -> None:
    class Broken(Store):
        def take_overdue(self, **kwargs: Any) -> list[RecoveredDelivery]:
            super().take_overdue(**kwargs)
            raise RuntimeError("database gone")

    store, enqueuer = Broken([_row("x")]), Enqueuer()
    requeued, poison = _sweep(store, enqueuer, claimant_alive=lambda name: False)
    assert store.calls == [True, False] and requeued == 0 and poison.value == 2


@pytest.mark.parametrize(
    ("answer", "expected"),
    [(True, True), (False, False), (ConnectionError("redis gone"), True)],
    ids=["alive", "dead", "unreadable-counts-as-alive"],
)
def test_a_claimant_whose_liveness_cannot_be_read_counts_as_alive(answer: object, expected: bool) -> None:
    def claimant_alive(name: str) -> bool:
        if isinstance(answer, Exception):
            raise answer
        return bool(answer)

    store = Store([])
    _sweep(store, Enqueuer(), claimant_alive=claimant_alive)
    assert store.asked == [expected]
