"""Recover deliveries whose RQ job was lost: overdue pending rows and stuck in-progress rows.

Postgres is the truth and Redis may forget (a restart, an eviction, a crash between writing a row and
enqueueing its job). The sweep stamps candidate rows in one statement (so each is re-enqueued once per
grace period, even with two sweepers at once) and enqueues a job for each from its payload; the claim
makes any duplicate job harmless. A pending row whose queue still holds older jobs is left alone: its
job is waiting in the backlog, not lost. It also resets the queue-depth and poison gauges from Postgres.

Each pass first puts back RQ jobs a stop stranded, rows or not (``rq_jobs.recover_stranded``, §7.4).
Each pass is bounded: it stops at the first row it has already enqueued in this pass (a grace period
too short to space re-enqueues) and after ``max_batches`` batches. ``sweep_pass`` runs one pass under
the cluster-wide lock (``SweepLock``) on its own connections; ``SweeperThread`` calls it periodically
inside ``alert-worker run``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from alert_worker.counters import Gauge
from alert_worker.keys import RedisKeys
from alert_worker.liveness import Liveness
from alert_worker.redaction import safe_error
from alert_worker.resources import short_lived
from alert_worker.rq_jobs import recover_stranded
from alert_worker.settings import Settings
from alert_worker.store import DeliveryStore, RecoveredDelivery
from alert_worker.wiring import collaborators

log = structlog.get_logger("alert_worker.sweep")


# RQ timestamps come from the producer's clock, the rows' from the database's: allow for some skew.
QUEUE_CLOCK_MARGIN_SECONDS = 5.0


class Enqueuer(Protocol):
    def oldest_queued_at(self, queue: str) -> datetime | None: ...

    def enqueue_recovered(self, row: RecoveredDelivery, *, kind: str) -> bool: ...


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
    max_batches: int = 20,
    oldest_pending_epoch: Callable[[], int] | None = None,
    oldest_pending_gauge: Gauge | None = None,
    claimant_alive: Callable[[str], bool] | None = None,
    dead_after_seconds: int = 60,
) -> SweepReport:
    """One pass: re-enqueue what is overdue, then reconcile the gauges.

    ``oldest_pending_epoch`` (a query) and ``oldest_pending_gauge`` feed the metrics' oldest-pending age.
    ``claimant_alive`` (``liveness.Liveness.is_alive``) turns on the dead-worker reclaim (docs/contract.md §6.1).

    A failure never ends the pass early: a claimant whose liveness cannot be read counts as alive, a
    batch that fails is taken again without the dead-worker reclaim (pending and stuck rows still move),
    and a row whose enqueue fails is logged and left for a later pass (its stamp spaces the retry).
    """
    seen: set[str] = set()
    requeued = 0
    due_before = _still_queued_cutoffs(store, enqueuer)
    alive = _assume_alive_on_error(claimant_alive) if claimant_alive is not None else None
    for _ in range(max_batches):
        batch = _take_batch(
            store,
            grace_seconds=grace_seconds,
            limit=batch_size,
            due_before=due_before,
            claimant_alive=alive,
            dead_after_seconds=dead_after_seconds,
        )
        if batch is None:
            break
        fresh = [row for row in batch if row.id not in seen]
        for row in fresh:
            seen.add(row.id)
            try:
                enqueuer.enqueue_recovered(row, kind="sweep")
                requeued += 1
            except Exception as exc:  # noqa: BLE001 - one row must not stop the others
                log.error("sweep_enqueue_failed", delivery_id=row.id, channel=row.channel, error=safe_error(exc))
        if len(batch) < batch_size or len(fresh) < len(batch):  # done, or taking rows it already took
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


def _take_batch(
    store: DeliveryStore,
    *,
    grace_seconds: int,
    limit: int,
    due_before: dict[str, datetime],
    claimant_alive: Callable[[str], bool] | None,
    dead_after_seconds: int,
) -> list[RecoveredDelivery] | None:
    """One ``take_overdue``; on failure once more without the dead-worker reclaim; ``None`` if that fails too."""
    try:
        return store.take_overdue(
            grace_seconds=grace_seconds,
            limit=limit,
            due_before=due_before,
            claimant_alive=claimant_alive,
            dead_after_seconds=dead_after_seconds,
        )
    except Exception as exc:  # noqa: BLE001 - logged; the pass goes on with what still works
        log.error("sweep_batch_failed", dead_worker_reclaim=claimant_alive is not None, error=safe_error(exc))
    if claimant_alive is None:
        return None
    try:
        return store.take_overdue(grace_seconds=grace_seconds, limit=limit, due_before=due_before)
    except Exception as exc:  # noqa: BLE001 - as above
        log.error("sweep_batch_failed", dead_worker_reclaim=False, error=safe_error(exc))
        return None


def _assume_alive_on_error(claimant_alive: Callable[[str], bool]) -> Callable[[str], bool]:
    """``claimant_alive`` answering True (leave the row alone) when the question itself fails."""

    def alive(name: str) -> bool:
        try:
            return claimant_alive(name)
        except Exception as exc:  # noqa: BLE001 - one unreadable claimant must not stop the pass
            log.error("sweep_liveness_failed", error=safe_error(exc))
            return True

    return alive


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


def sweep_pass(settings: Settings, *, lock_ttl_seconds: float, release_lock: bool) -> SweepReport | None:
    """One sweep under the cluster-wide lock, on its own connections; ``None`` when another holds it.

    The worker's thread keeps the lock until it expires (one sweep per interval cluster-wide);
    ``alert-worker sweep`` releases it when done.
    """
    with short_lived(settings) as conns:
        lock = SweepLock(
            client=conns.redis,
            key=RedisKeys(settings.redis_key_prefix).sweep_lock,
            ttl_seconds=lock_ttl_seconds,
            token_factory=lambda: uuid.uuid4().hex,
        )
        if not lock.acquire():
            return None
        try:
            parts = collaborators(settings, pool=conns.database, client=conns.redis)
            try:
                stranded = recover_stranded(conns.redis, settings.queues, with_rows=parts.store.existing_ids)
            except Exception as exc:  # noqa: BLE001 - the row recovery below must run whatever happens here
                log.error("stranded_recovery_failed", error=safe_error(exc))
                stranded = 0
            if stranded:
                log.warning("stranded_jobs_recovered", jobs=stranded)
            return sweep_once(
                store=parts.store,
                enqueuer=parts.enqueuer,
                grace_seconds=settings.sweep_grace_seconds,
                queue_depth=parts.queue_depth,
                poison_gauge=parts.poison_gauge,
                oldest_pending_epoch=parts.queries.oldest_fresh_pending_epoch,
                oldest_pending_gauge=parts.oldest_pending_gauge,
                claimant_alive=Liveness(client=conns.redis, prefix=settings.redis_key_prefix).is_alive,
                dead_after_seconds=settings.job_timeout_seconds,
            )
        finally:
            if release_lock:
                lock.release()


class SweeperThread(threading.Thread):
    """Calls ``sweep`` every ``interval_seconds`` until stopped; logs failures, never raises."""

    def __init__(
        self, *, interval_seconds: float, sweep: Callable[[], object], stopping: threading.Event | None = None
    ) -> None:
        super().__init__(name="alert-sweeper", daemon=True)
        self._interval = interval_seconds
        self._sweep = sweep
        self._stopping = stopping or threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self._sweep()
            except Exception as exc:  # noqa: BLE001 - a failed pass must never take the worker down
                log.error("sweep_failed", error=safe_error(exc))

    def stop(self, timeout_seconds: float = 15.0) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout_seconds)
