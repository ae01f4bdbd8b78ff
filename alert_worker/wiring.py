"""The one place that assembles a delivery's collaborators from settings and open connections.

A job (``build_executor``), a replay or resolve (``poison``), the sweep and the producer all take their
store, poison queue, gauges and enqueuer from ``collaborators``, so they cannot be wired differently.
Enqueues use the process's one enqueue client (``resources.enqueue_client``), never the connection of
the moment: RQ caches its scripts per client object. Tests build ``DeliveryExecutor`` with fakes instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
import redis
from psycopg_pool import ConnectionPool, PoolTimeout

from alert_worker.channels import build_channel
from alert_worker.channels.kept import kept_channels
from alert_worker.counters import Gauge, oldest_pending_gauge, poison_count, queue_depth
from alert_worker.executor import DeliveryExecutor
from alert_worker.feedback import build_feedback
from alert_worker.metrics import RedisMetrics
from alert_worker.poison import PoisonQueue
from alert_worker.queries import OperatorQueries
from alert_worker.rate_limit import RateLimiter
from alert_worker.redaction import safe_error, url_password
from alert_worker.resources import JobResources, enqueue_client
from alert_worker.retry import RetryPolicy
from alert_worker.rq_jobs import RqEnqueuer, current_job
from alert_worker.sent_marks import build_sent_marks
from alert_worker.settings import Settings
from alert_worker.store import Claim, DeliveryStore, NewDelivery

# What "Postgres cannot be reached" looks like: refused, too many clients, no connection within the pool wait.
DATABASE_UNREACHABLE_ERRORS: tuple[type[Exception], ...] = (psycopg.OperationalError, PoolTimeout)


class DatabaseUnreachableError(Exception):
    """Postgres could not be reached before the claim: nothing was written, the job may be run again."""


class _ClaimFirstStore(DeliveryStore):
    """A store whose claim reports an unreachable database as ``DatabaseUnreachableError``.

    A claim is one autocommit statement: when it cannot connect, no row changed hands, so the job can
    safely be run again later (docs/contract.md §6.3). Every later statement keeps its own errors.
    """

    def __init__(
        self, *, pool: ConnectionPool, stuck_after_seconds: int, database_url: str, claimed_by: str | None = None
    ) -> None:
        super().__init__(pool=pool, stuck_after_seconds=stuck_after_seconds, claimed_by=claimed_by)
        self._password = url_password(database_url)

    def claim(self, new: NewDelivery) -> Claim | None:
        try:
            return super().claim(new)
        except DATABASE_UNREACHABLE_ERRORS as exc:
            raise DatabaseUnreachableError(safe_error(exc, self._password)) from exc


@dataclass(frozen=True)
class Collaborators:
    """Everything a delivery's life touches, on one set of connections."""

    store: DeliveryStore
    queries: OperatorQueries
    poison_queue: PoisonQueue
    queue_depth: Gauge
    poison_gauge: Gauge
    oldest_pending_gauge: Gauge
    enqueuer: RqEnqueuer
    redis: redis.Redis


def enqueuer_for(settings: Settings) -> RqEnqueuer:
    """The enqueuer on this process's one enqueue client."""
    return RqEnqueuer(connection=enqueue_client(settings), job_timeout_seconds=settings.job_timeout_seconds)


def collaborators(
    settings: Settings, *, pool: ConnectionPool, client: redis.Redis, claimed_by: str | None = None
) -> Collaborators:
    """The store on ``pool``, gauges on ``client``, and the enqueuer on the process's enqueue client.

    ``claimed_by``: the RQ worker running this job, written by every claim (dead-worker reclaim).
    """
    store = _ClaimFirstStore(
        pool=pool,
        stuck_after_seconds=settings.stuck_after_seconds,
        database_url=settings.database_url,
        claimed_by=claimed_by,
    )
    prefix = settings.redis_key_prefix
    poison_gauge = poison_count(client, prefix)
    return Collaborators(
        store=store,
        queries=OperatorQueries(source=pool),
        poison_queue=PoisonQueue(store=store, gauge=poison_gauge),
        queue_depth=queue_depth(client, prefix),
        poison_gauge=poison_gauge,
        oldest_pending_gauge=oldest_pending_gauge(client, prefix),
        enqueuer=enqueuer_for(settings),
        redis=client,
    )


def hash_secret(settings: Settings, store: DeliveryStore) -> str:
    """The recipient-hash secret; an unreachable database is ``DatabaseUnreachableError`` (nothing claimed)."""
    try:
        return store.recipient_hash_secret(settings.recipient_hash_secret)
    except DATABASE_UNREACHABLE_ERRORS as exc:
        raise DatabaseUnreachableError(safe_error(exc, url_password(settings.database_url))) from exc


def build_executor(settings: Settings, resources: JobResources) -> DeliveryExecutor:
    """One job's executor on the job's resources; in a thread-pooled worker, on its thread's kept channels."""
    job = current_job()
    parts = collaborators(
        settings, pool=resources.pool, client=resources.redis, claimed_by=job.worker_name if job else None
    )
    secret = hash_secret(settings, parts.store)
    metrics = RedisMetrics(client=resources.redis, prefix=settings.redis_key_prefix)
    kept = kept_channels.get()
    return DeliveryExecutor(
        store=parts.store,
        poison_queue=parts.poison_queue,
        limiter=RateLimiter(client=resources.redis, key_prefix=settings.redis_key_prefix),
        channel_factory=kept.get if kept is not None else lambda channel: build_channel(channel, settings),
        close_channels=kept is None,
        scheduler=parts.enqueuer,
        retry_policy=retry_policy(settings),
        rate_limits=settings.rate_limits,
        queue_depth=parts.queue_depth,
        hash_secret=secret,
        default_webhook_url=settings.slack.default_webhook_url,
        max_defer_seconds=settings.max_defer_seconds,
        channel_pause_seconds=settings.channel_pause_seconds,
        metrics=metrics,
        feedback=build_feedback(settings, resources.pool, resources.redis, hash_secret=secret, metrics=metrics),
        sent_marks=build_sent_marks(settings, resources.redis),
        digest=settings.digest,
        digest_max_items=settings.digest_max_items,
    )


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.max_attempts,
        delays=settings.retry_delays,
        max_retry_delay_seconds=settings.max_retry_delay_seconds,
    )
