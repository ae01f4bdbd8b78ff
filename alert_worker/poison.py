"""The poison queue: deliveries parked for an operator, and the operator's list, replay and resolve.

``PoisonQueue`` parks a delivery and keeps the ``alert:poison:count`` gauge in step. ``list_poisoned``,
``replay`` and ``resolve`` are what ``alert-worker poison`` does; they return results and print nothing
(``commands`` prints). Collaborators come from ``wiring.collaborators``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import redis

from alert_worker.counters import Gauge
from alert_worker.queries import OperatorQueries
from alert_worker.store import DeliveryStore, RecoveredDelivery

REPLAY_BATCH = 500


class PoisonQueue:
    """Parks deliveries (``status='poison'``) and keeps the ``alert:poison:count`` gauge in step."""

    def __init__(self, *, store: DeliveryStore, gauge: Gauge) -> None:
        self._store = store
        self._gauge = gauge

    def park(self, delivery_id: str, token: str, *, attempts: int, error: str) -> None:
        self._store.poison(delivery_id, token, attempts=attempts, error=error)
        self._gauge.add(1)

    def replay(self, delivery_ids: list[str]) -> list[RecoveredDelivery]:
        """Back to pending; the caller enqueues each returned row exactly once."""
        moved = self._store.replay(delivery_ids)
        if moved:
            self._gauge.add(-len(moved))
        return moved

    def resolve(self, delivery_ids: list[str], *, note: str | None = None) -> list[str]:
        moved = self._store.resolve(delivery_ids, note=note)
        if moved:
            self._gauge.add(-len(moved))
        return moved


class RecoveryEnqueuer(Protocol):
    def enqueue_recovered(self, row: RecoveredDelivery, *, kind: str) -> bool: ...


class PoisonTools(Protocol):
    """What the operations need (``wiring.Collaborators`` has it)."""

    @property
    def queries(self) -> OperatorQueries: ...
    @property
    def poison_queue(self) -> PoisonQueue: ...
    @property
    def queue_depth(self) -> Gauge: ...
    @property
    def enqueuer(self) -> RecoveryEnqueuer: ...


@dataclass(frozen=True)
class ReplayResult:
    dry_run: bool
    replayed: list[str]  # with dry_run: what would be replayed
    skipped: dict[str, str] = field(default_factory=dict)  # id -> why
    enqueue_failed: list[str] = field(default_factory=list)  # back to pending, no job: the sweep enqueues it


@dataclass(frozen=True)
class ResolveResult:
    resolved: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


def list_poisoned(
    queries: OperatorQueries, *, channel: str | None, since: datetime | None, limit: int
) -> list[dict[str, Any]]:
    """Newest first, masked recipients, ``replayable`` false when no payload was stored."""
    return queries.list_poison(channel=channel, since=since, limit=limit)


def explain_skipped(queries: OperatorQueries, ids: list[str], done: set[str]) -> dict[str, str]:
    """Why each requested id that was not moved was left alone."""
    rest = [i for i in dict.fromkeys(ids) if i not in done]
    if not rest:
        return {}
    statuses = queries.statuses(rest)
    reasons = {}
    for delivery_id in rest:
        status = statuses.get(delivery_id)
        if status is None:
            reasons[delivery_id] = "no such delivery"
        elif status == "poison":
            reasons[delivery_id] = "no stored payload, cannot be replayed (resolve it)"
        else:
            reasons[delivery_id] = f"not in the poison queue (status {status})"
    return reasons


def replay(
    tools: PoisonTools, *, ids: list[str], channel: str | None, since: datetime | None, dry_run: bool
) -> ReplayResult:
    """Move each target back to pending once (the UPDATE only takes poison rows), then enqueue it once."""
    explicit = list(dict.fromkeys(ids)) or None
    targets = tools.queries.replayable_ids(ids=explicit, channel=channel, since=since)
    if dry_run:
        return ReplayResult(True, targets, explain_skipped(tools.queries, explicit or [], set(targets)))
    replayed: list[str] = []
    failed: list[str] = []
    for start in range(0, len(targets), REPLAY_BATCH):
        moved = tools.poison_queue.replay(targets[start : start + REPLAY_BATCH])
        tools.queue_depth.add(len(moved))
        for row in moved:
            try:
                tools.enqueuer.enqueue_recovered(row, kind="replay")  # attempts are 0 after a replay
                replayed.append(row.id)
            except redis.RedisError:
                failed.append(row.id)
    skipped = explain_skipped(tools.queries, explicit or [], set(replayed) | set(failed))
    return ReplayResult(False, replayed, skipped, failed)


def resolve(
    store: DeliveryStore,
    queries: OperatorQueries,
    poison_queue: PoisonQueue | None,
    *,
    ids: list[str],
    note: str | None,
) -> ResolveResult:
    """Give up on poisoned deliveries (status failed, payload erased); the gauge follows when Redis is there."""
    wanted = list(dict.fromkeys(ids))
    moved = poison_queue.resolve(wanted, note=note) if poison_queue else store.resolve(wanted, note=note)
    return ResolveResult(moved, explain_skipped(queries, wanted, set(moved)))
