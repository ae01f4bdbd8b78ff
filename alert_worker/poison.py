"""The poison queue: deliveries parked for an operator, counted in Redis, replayable from Postgres."""

from __future__ import annotations

from alert_worker.counters import Gauge
from alert_worker.store import DeliveryStore, RecoveredDelivery


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

    def sync(self) -> int:
        """Reset the gauge from Postgres, the source of truth."""
        size = self._store.counts()["poison"]
        self._gauge.set(size)
        return size
