"""RQ edge 2, the worker process (``alert-worker run``): probes, migration, gauges, sweeper, metrics, RQ.

Start-up fails fast, with one JSON log line saying why, when ``DATABASE_URL``/``REDIS_URL`` are missing
or unusable or either server does not answer (``health``). Then an RQ worker runs on ``RQ_QUEUES`` with
the scheduler on and job-description logging off. SIGTERM is RQ's warm shutdown: the running delivery
finishes (or, if the horse is killed, stays claimable and the sweep recovers it). The sweeper is a
daemon thread (``sweep.SweeperThread``) opening its own short-lived connections for every pass.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import psycopg
import redis
import structlog
from rq import Queue
from rq.utils import import_attribute
from rq.worker import BaseWorker

# Preload the job module and the e-mail and Slack channels (smtplib, requests) before RQ forks
# work-horses, so a horse does not re-import them for every job. twilio stays lazy (SMS only).
import alert_worker.channels.email
import alert_worker.channels.slack
import alert_worker.job  # noqa: F401
from alert_worker.health import (
    StartupError,
    check_database,
    check_redis,
    require_connection_settings,
    warn_disabled_channels,
)
from alert_worker.liveness import observe_scheduler_locks, worker_name
from alert_worker.logs import configure_logging
from alert_worker.preload import preload_process
from alert_worker.redaction import safe_error, url_password
from alert_worker.resources import open_redis, short_lived
from alert_worker.rq_guard import ChildGuard, guarded
from alert_worker.settings import Settings
from alert_worker.sweep import SweeperThread, reconcile_gauges, sweep_pass
from alert_worker.wiring import collaborators

if TYPE_CHECKING:
    from alert_worker.metrics_server import MetricsServer

log = structlog.get_logger("alert_worker.worker")


def load_worker_class(raw: str) -> type[Any]:
    """An importable RQ worker class, e.g. ``rq.worker.SimpleWorker``; ``ValueError`` otherwise."""
    try:
        cls = import_attribute(raw)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"cannot import worker class {raw!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, BaseWorker)):
        raise ValueError(f"{raw!r} is not an RQ worker class")
    return cls


def sync_gauges(settings: Settings) -> dict[str, int]:
    """Migrate when configured, then reset the queue-depth, poison and oldest-pending gauges from Postgres."""
    with short_lived(settings) as conns:
        if settings.auto_migrate:
            conns.store.migrate()
        parts = collaborators(settings, pool=conns.database, client=conns.redis)
        return reconcile_gauges(
            store=parts.store,
            queue_depth=parts.queue_depth,
            poison_gauge=parts.poison_gauge,
            oldest_pending_epoch=parts.queries.oldest_fresh_pending_epoch,
            oldest_pending_gauge=parts.oldest_pending_gauge,
        )


def run_worker(
    settings: Settings, *, burst: bool = False, worker_class: type[Any] | None = None, threads: int | None = None
) -> int:
    """0 after a clean (warm) shutdown or an empty burst, 1 when start-up checks fail.

    With no ``worker_class`` this is the thread-pooled worker (docs/contract.md §6.1), up to ``threads`` deliveries
    at once; a ``worker_class`` is one of RQ's one-job-at-a-time classes.
    """
    from alert_worker.threaded_worker import ThreadPoolWorker, resolve_threads

    configure_logging(settings.log_format, settings.log_level, rq_level=settings.rq_log_level)
    try:
        threads = resolve_threads(settings, threads)
    except ValueError as exc:
        log.error("configuration_invalid", error=str(exc))
        return 1
    try:
        require_connection_settings(settings)
        check_database(settings)
        check_redis(settings)
        counts = sync_gauges(settings)
    except StartupError as exc:
        log.error(exc.event, **exc.fields)
        return 1
    except (psycopg.Error, redis.RedisError, OSError) as exc:
        secrets = (url_password(settings.database_url), url_password(settings.redis_url))
        log.error("startup_failed", error=safe_error(exc, *secrets))
        return 1
    connection = open_redis(settings)
    children = ChildGuard().install()  # forked children: no listening socket, and die with this process
    metrics: MetricsServer | None = None
    sweeper: SweeperThread | None = None
    try:
        if settings.metrics_port:
            from alert_worker.liveness import scheduler_locks
            from alert_worker.metrics_server import MetricsServer, collector_for

            collector = collector_for(
                settings, client_factory=lambda: open_redis(settings), scheduler_locks=scheduler_locks
            )
            try:
                metrics = MetricsServer(collector=collector, port=settings.metrics_port)
            except (OSError, OverflowError) as exc:  # in use (a second unit on one env file), not ours to bind
                log.error("metrics_port_unavailable", port=settings.metrics_port, error=safe_error(exc))
                return 1
            children.add_listener(metrics.listener())
        warn_disabled_channels(settings)  # after the last start-up failure: a failure is one line
        if not burst:
            interval = settings.sweep_interval_seconds
            sweeper = SweeperThread(
                interval_seconds=interval,
                sweep=lambda: sweep_pass(settings, lock_ttl_seconds=max(1.0, interval * 0.9), release_lock=False),
            )
            sweeper.start()
        preload_process(settings)  # per-process caches before any work-horse fork (alert_worker.preload)
        cls: type[Any] = worker_class or ThreadPoolWorker
        queues = [Queue(name, connection=connection) for name in settings.queues]
        seen = partial(observe_scheduler_locks, connection, settings.redis_key_prefix, list(settings.queues))
        if worker_class is None:
            worker = ThreadPoolWorker(
                queues, connection=connection, settings=settings, threads=threads, scheduler_seen=seen
            )
        else:
            worker = guarded(cls)(
                queues, connection=connection, log_job_description=False, scheduler_seen=seen, name=worker_name()
            )
        children.set_horse_probe(lambda: bool(worker.forking_horse))
        log.info(
            "worker_started",
            queues=list(settings.queues),
            worker_class=f"{cls.__module__}.{cls.__qualname__}",
            burst=burst,
            threads=threads if worker_class is None else 1,
            metrics_port=metrics.port if metrics else None,
            sweep_interval_seconds=None if burst else settings.sweep_interval_seconds,
            pending=counts["pending"],
            poison=counts["poison"],
        )
        try:
            worker.work(burst=burst, with_scheduler=True)
        except (redis.RedisError, OSError) as exc:  # RQ's teardown could not reach Redis either
            log.error("redis_unreachable", error=safe_error(exc, url_password(settings.redis_url)))
            return 1
        if not burst and not worker.stop_requested:  # RQ's loop gave up (its log line says why)
            log.error("worker_loop_failed", detail="the RQ work loop ended without a stop request")
            return 1
    finally:
        children.active = False
        if sweeper is not None:
            sweeper.stop()
        if metrics is not None:
            metrics.close()
        connection.close()
    log.info("worker_stopped")
    return 0
