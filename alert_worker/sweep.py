"""Recover deliveries whose RQ job was lost: overdue pending rows and stuck in-progress rows.

Postgres is the truth and Redis may forget (a restart, an eviction, a crash between writing a row and
enqueueing its job). The sweep stamps candidate rows in one statement (so each is re-enqueued once per
grace period, even with two sweepers at once) and enqueues a job for each from its payload; the claim
makes any duplicate job harmless. A pending row whose queue still holds older jobs is left alone: its
job is waiting in the backlog, not lost. It also resets the queue-depth and poison gauges from Postgres.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from alert_worker.counters import Gauge
from alert_worker.store import DeliveryStore, RecoveredDelivery

log = structlog.get_logger("alert_worker.sweep")


# RQ timestamps come from the producer's clock, the rows' from the database's: allow for some skew.
QUEUE_CLOCK_MARGIN_SECONDS = 5.0


class Enqueuer(Protocol):
    def enqueue_now(
        self, *, queue: str, delivery_id: str, channel: str, payload: dict[str, str], attempt: int, suffix: str
    ) -> bool: ...

    def oldest_queued_at(self, queue: str) -> datetime | None: ...


@dataclass(frozen=True)
class SweepReport:
    requeued: int
    queue_depth: int
    poison: int


def sweep_once(
    *,
    store: DeliveryStore,
    enqueuer: Enqueuer,
    queue_depth: Gauge,
    poison_gauge: Gauge,
    grace_seconds: int,
    batch_size: int = 500,
    oldest_pending_epoch: Callable[[], int] | None = None,
    oldest_pending_gauge: Gauge | None = None,
    claimant_alive: Callable[[str], bool] | None = None,
    dead_after_seconds: int = 60,
) -> SweepReport:
    """One pass: re-enqueue what is overdue, then reconcile the gauges.

    ``oldest_pending_epoch`` (a query) and ``oldest_pending_gauge`` feed the metrics' oldest-pending age.
    ``claimant_alive`` (``liveness.Liveness.is_alive``) turns on the dead-worker reclaim (CONTRACT §6.1).
    """
    requeued = 0
    due_before = _still_queued_cutoffs(store, enqueuer)
    while True:
        batch = store.take_overdue(
            grace_seconds=grace_seconds,
            limit=batch_size,
            due_before=due_before,
            claimant_alive=claimant_alive,
            dead_after_seconds=dead_after_seconds,
        )
        for row in batch:
            enqueue_recovered(enqueuer, row, kind="sweep")
            requeued += 1
        if len(batch) < batch_size:
            break
    counts = reconcile_gauges(
        store=store,
        queue_depth=queue_depth,
        poison_gauge=poison_gauge,
        oldest_pending_epoch=oldest_pending_epoch,
        oldest_pending_gauge=oldest_pending_gauge,
    )
    depth = counts["pending"] + counts["in_progress"]
    log.info("sweep_done", requeued=requeued, queue_depth=depth, poison=counts["poison"])
    return SweepReport(requeued=requeued, queue_depth=depth, poison=counts["poison"])


def reconcile_gauges(
    *,
    store: DeliveryStore,
    queue_depth: Gauge,
    poison_gauge: Gauge,
    oldest_pending_epoch: Callable[[], int] | None = None,
    oldest_pending_gauge: Gauge | None = None,
) -> dict[str, int]:
    """Reset the Redis gauges from Postgres, the source of truth; returns the counts per status."""
    counts = store.counts()
    queue_depth.set(counts["pending"] + counts["in_progress"])
    poison_gauge.set(counts["poison"])
    if oldest_pending_epoch is not None and oldest_pending_gauge is not None:
        oldest_pending_gauge.set(oldest_pending_epoch())
    return counts


def _still_queued_cutoffs(store: DeliveryStore, enqueuer: Enqueuer) -> dict[str, datetime]:
    """Per queue, the time before which a row's job must have left the queue (RQ is FIFO).

    A pending row that became due after the oldest job still waiting in its queue may have its job
    waiting too: during a backlog longer than the grace period, re-enqueueing it would only add
    duplicate jobs (harmless, the claim skips them) and make the backlog longer.
    """
    cutoffs: dict[str, datetime] = {}
    for queue in store.pending_queues():
        oldest = enqueuer.oldest_queued_at(queue)
        if oldest is not None:
            cutoffs[queue] = oldest - timedelta(seconds=QUEUE_CLOCK_MARGIN_SECONDS)
    return cutoffs


def enqueue_recovered(enqueuer: Enqueuer, row: RecoveredDelivery, *, kind: str) -> bool:
    """Enqueue a row the sweep or a replay moved, under an id stamped with the move: once per move."""
    return enqueuer.enqueue_now(
        queue=row.queue,
        delivery_id=row.id,
        channel=row.channel,
        payload=job_payload(row.payload),
        attempt=row.attempts,
        suffix=f"{kind}-{int(row.stamp.timestamp() * 1000)}",
    )


def job_payload(payload: dict[str, Any] | None) -> dict[str, str]:
    """The job arguments for a stored payload. A row whose arguments could not be stored is enqueued
    empty; its job poisons it."""
    if not payload:
        return {"recipient": "", "subject": "", "body": ""}
    return {k: str(payload.get(k) or "") for k in ("recipient", "subject", "body")}


class SweepLock:
    """One sweeper at a time cluster-wide: a Redis key set with NX and an expiry, released by owner."""

    _RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

    def __init__(self, *, client: Any, key: str, ttl_seconds: float, token_factory: Callable[[], str]) -> None:
        self._client = client
        self._key = key
        self._ttl_ms = max(1000, int(ttl_seconds * 1000))
        self._token_factory = token_factory
        self._token: str | None = None

    def acquire(self) -> bool:
        token = self._token_factory()
        if self._client.set(self._key, token, nx=True, px=self._ttl_ms):
            self._token = token
            return True
        return False

    def release(self) -> None:
        if self._token is not None:
            self._client.eval(self._RELEASE, 1, self._key, self._token)
            self._token = None
