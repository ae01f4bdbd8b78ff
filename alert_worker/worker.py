"""The worker process: checks, migration, gauges, then an RQ worker with the scheduler on."""

from __future__ import annotations

import uuid

from rq import Queue
from rq.utils import import_attribute

import alert_worker.entrypoint  # noqa: F401  - preload the job module before RQ forks work-horses
from alert_worker.counters import poison_count, queue_depth
from alert_worker.entrypoint import closing_resources, open_job_resources
from alert_worker.logs import configure_logging
from alert_worker.rq_jobs import RqEnqueuer
from alert_worker.settings import Settings
from alert_worker.store import DeliveryStore
from alert_worker.sweep import SweepLock, sweep_once


def sweep_now(settings: Settings) -> int:
    """One sweep pass under the cluster-wide lock; 0 when done or another sweeper holds the lock."""
    configure_logging(settings.log_format)
    with closing_resources(open_job_resources(settings)) as res:
        lock = SweepLock(
            client=res.redis,
            key=f"{settings.redis_key_prefix}sweep:lock",
            ttl_seconds=max(60.0, settings.sweep_interval_seconds * 2),
            token_factory=lambda: uuid.uuid4().hex,
        )
        if not lock.acquire():
            return 0
        try:
            sweep_once(
                store=DeliveryStore(pool=res.pool, stuck_after_seconds=settings.stuck_after_seconds),
                enqueuer=RqEnqueuer(connection=res.redis, job_timeout_seconds=settings.job_timeout_seconds),
                queue_depth=queue_depth(res.redis, settings.redis_key_prefix),
                poison_gauge=poison_count(res.redis, settings.redis_key_prefix),
                grace_seconds=settings.sweep_grace_seconds,
            )
        finally:
            lock.release()
    return 0


def run_worker(settings: Settings, *, burst: bool = False, worker_class: str | None = None) -> int:
    configure_logging(settings.log_format)
    if settings.auto_migrate:
        with closing_resources(open_job_resources(settings)) as res:
            DeliveryStore(pool=res.pool).migrate()
    from alert_worker.entrypoint import open_redis

    connection = open_redis(settings)
    cls = import_attribute(worker_class or "rq.worker.Worker")
    queues = [Queue(name, connection=connection) for name in settings.queues]
    worker = cls(queues, connection=connection, log_job_description=False)
    worker.work(burst=burst, with_scheduler=True)
    return 0
