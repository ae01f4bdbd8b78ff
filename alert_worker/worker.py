"""The worker process (``alert-worker run``): preflight checks, migration, gauges, sweeper, metrics, RQ.

Start-up fails fast, with one JSON log line saying why, when ``DATABASE_URL``/``REDIS_URL`` are missing
or either server does not answer. Then an RQ worker runs on ``RQ_QUEUES`` with the scheduler on and
job-description logging off. SIGTERM is RQ's warm shutdown: the running delivery finishes (or, if the
horse is killed, stays claimable and the sweep recovers it). The sweeper is a daemon thread that opens
its own short-lived connections for every pass and never holds them across the work-horse ``fork()``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import psycopg
import redis
import structlog
from rq import Queue

# Preload the job module and the e-mail and Slack channels (smtplib, requests) before RQ forks
# work-horses, so a horse does not re-import them for every job. twilio stays lazy (SMS only).
import alert_worker.channels.email
import alert_worker.entrypoint  # noqa: F401
from alert_worker.channels.slack import check_webhook_url
from alert_worker.connect import postgres_kwargs
from alert_worker.counters import Gauge, poison_count, queue_depth
from alert_worker.errors import InvalidInputError
from alert_worker.logs import configure_logging
from alert_worker.metrics import MetricKeys
from alert_worker.resources import Connections, open_redis, short_lived

if TYPE_CHECKING:
    from alert_worker.metrics_server import MetricsServer
from alert_worker.queries import OperatorQueries
from alert_worker.rq_jobs import RqEnqueuer
from alert_worker.settings import Settings
from alert_worker.sweep import SweepLock, SweepReport, reconcile_gauges, sweep_once

log = structlog.get_logger("alert_worker.worker")


class StartupError(Exception):
    """The worker cannot start; ``event`` and ``fields`` make its one log line."""

    def __init__(self, event: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.event = event
        self.fields = {"error": message, **fields}


def safe_error(exc: BaseException, *secrets: str) -> str:
    """First line of an error, bounded, with any known secret (a DSN password) masked."""
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _target(url: str) -> str:
    """``host:port/db`` of a URL for a log line; never credentials."""
    parts = urlsplit(url)
    if not parts.hostname:
        return "?"
    return f"{parts.hostname}:{parts.port or ''}{parts.path}"


def _password(url: str) -> str:
    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""


def require_connection_settings(settings: Settings) -> None:
    missing = [
        name
        for name, value in (("DATABASE_URL", settings.database_url), ("REDIS_URL", settings.redis_url))
        if not value
    ]
    if missing:
        raise StartupError(
            "configuration_missing", f"required environment variable not set: {', '.join(missing)}", variables=missing
        )


def check_database(settings: Settings) -> None:
    """``SELECT 1`` on a fresh connection."""
    try:
        with psycopg.connect(settings.database_url, **postgres_kwargs(settings)) as conn:
            conn.execute("SELECT 1")
    except (psycopg.Error, OSError) as exc:
        raise StartupError(
            "database_unreachable",
            safe_error(exc, _password(settings.database_url)),
            target=_target(settings.database_url),
        ) from exc


def check_redis(settings: Settings) -> None:
    """``PING`` on a fresh client."""
    client = open_redis(settings)
    try:
        client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise StartupError(
            "redis_unreachable", safe_error(exc, _password(settings.redis_url)), target=_target(settings.redis_url)
        ) from exc
    finally:
        client.close()


def oldest_pending_gauge(client: redis.Redis, prefix: str) -> Gauge:
    return Gauge(client=client, key=MetricKeys(prefix).oldest_pending_since)


def _gauges(settings: Settings, conns: Connections) -> dict[str, Any]:
    """The gauges a sweep reconciles, on these connections."""
    prefix = settings.redis_key_prefix
    return {
        "queue_depth": queue_depth(conns.redis, prefix),
        "poison_gauge": poison_count(conns.redis, prefix),
        "oldest_pending_epoch": OperatorQueries(source=conns.database).oldest_fresh_pending_epoch,
        "oldest_pending_gauge": oldest_pending_gauge(conns.redis, prefix),
    }


def sync_gauges(settings: Settings, conns: Connections) -> dict[str, int]:
    """Reset the queue-depth, poison and oldest-pending gauges from Postgres (start-up)."""
    return reconcile_gauges(store=conns.store, **_gauges(settings, conns))


def sweep_pass(settings: Settings, *, lock_ttl_seconds: float, release_lock: bool) -> SweepReport | None:
    """One sweep under the cluster-wide lock, on its own connections; ``None`` when another holds it.

    The worker's thread keeps the lock until it expires (one sweep per interval cluster-wide);
    ``alert-worker sweep`` releases it when done.
    """
    with short_lived(settings) as conns:
        lock = SweepLock(
            client=conns.redis,
            key=f"{settings.redis_key_prefix}sweep:lock",
            ttl_seconds=lock_ttl_seconds,
            token_factory=lambda: uuid.uuid4().hex,
        )
        if not lock.acquire():
            return None
        try:
            return sweep_once(
                store=conns.store,
                enqueuer=RqEnqueuer(connection=conns.redis, job_timeout_seconds=settings.job_timeout_seconds),
                grace_seconds=settings.sweep_grace_seconds,
                **_gauges(settings, conns),
            )
        finally:
            if release_lock:
                lock.release()


class SweeperThread(threading.Thread):
    """Calls ``sweep`` every ``interval_seconds`` until stopped; logs failures, never raises."""

    def __init__(self, *, interval_seconds: float, sweep: Callable[[], object]) -> None:
        super().__init__(name="alert-sweeper", daemon=True)
        self._interval = interval_seconds
        self._sweep = sweep
        self._stopping = threading.Event()

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


def _warn_disabled_channels(settings: Settings) -> None:
    for channel, missing in settings.missing_channel_settings().items():
        log.warning(
            "channel_disabled",
            channel=channel.value,
            missing=list(missing),
            detail=f"{channel.value} deliveries will be poisoned (channel_not_configured)",
        )
    if settings.slack.default_webhook_url:
        try:
            check_webhook_url(settings.slack.default_webhook_url, settings.slack.allowed_hosts)
        except InvalidInputError as exc:
            log.warning(
                "channel_misconfigured",
                channel="slack",
                variable="SLACK_WEBHOOK_URL",
                reason=exc.reason,
                detail="deliveries to the default webhook will be poisoned (channel_not_configured)",
            )


def run_worker(settings: Settings, *, burst: bool = False, worker_class: type[Any] | None = None) -> int:
    """``main()``: 0 after a clean (warm) shutdown or an empty burst, 1 when start-up checks fail."""
    from rq.worker import Worker

    configure_logging(settings.log_format)
    try:
        require_connection_settings(settings)
        check_database(settings)
        check_redis(settings)
        with short_lived(settings) as conns:
            if settings.auto_migrate:
                conns.store.migrate()
            counts = sync_gauges(settings, conns)
    except StartupError as exc:
        log.error(exc.event, **exc.fields)
        return 1
    except (psycopg.Error, redis.RedisError, OSError) as exc:
        log.error("startup_failed", error=safe_error(exc, _password(settings.database_url)))
        return 1
    _warn_disabled_channels(settings)
    connection = open_redis(settings)
    metrics: MetricsServer | None = None
    sweeper: SweeperThread | None = None
    try:
        if settings.metrics_port:
            from alert_worker.metrics_server import AlertCollector, MetricsServer

            collector = AlertCollector(client_factory=lambda: open_redis(settings), prefix=settings.redis_key_prefix)
            metrics = MetricsServer(collector=collector, port=settings.metrics_port)
        if not burst:
            interval = settings.sweep_interval_seconds
            sweeper = SweeperThread(
                interval_seconds=interval,
                sweep=lambda: sweep_pass(settings, lock_ttl_seconds=max(1.0, interval * 0.9), release_lock=False),
            )
            sweeper.start()
        cls = worker_class or Worker
        queues = [Queue(name, connection=connection) for name in settings.queues]
        worker = cls(queues, connection=connection, log_job_description=False)
        log.info(
            "worker_started",
            queues=list(settings.queues),
            worker_class=f"{cls.__module__}.{cls.__qualname__}",
            burst=burst,
            metrics_port=metrics.port if metrics else None,
            sweep_interval_seconds=None if burst else settings.sweep_interval_seconds,
            pending=counts["pending"],
            poison=counts["poison"],
        )
        worker.work(burst=burst, with_scheduler=True)
    finally:
        if sweeper is not None:
            sweeper.stop()
        if metrics is not None:
            metrics.close()
        connection.close()
    log.info("worker_stopped")
    return 0
