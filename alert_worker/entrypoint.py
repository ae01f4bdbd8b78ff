"""The RQ job ``execute_delivery_job`` and the process entry point ``main``.

Producers enqueue ``alert_worker.entrypoint.execute_delivery_job`` by import path: its name and argument
order are the wire format (CONTRACT §1). By default each job opens its own Postgres pool and Redis client,
builds its poison queue and rate limiter on them, and closes them in ``finally`` even when delivery raises.
``ALERT_RESOURCE_SCOPE=process`` keeps one pool and client per process instead (made after any fork,
closed at exit), for workers that run many jobs in one process; the per-job objects stay per job.
Module-level imports stay light: every forked RQ work-horse that was not preloaded re-imports this.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from psycopg import Connection
from psycopg_pool import ConnectionPool
from psycopg_pool.pool import AddConnection, MaintenanceTask, ReturnConnection
from rq import get_current_job

from alert_worker.channels import build_channel
from alert_worker.counters import poison_count, queue_depth
from alert_worker.executor import DeliveryExecutor, DeliveryRequest
from alert_worker.logs import ensure_logging
from alert_worker.metrics import RedisMetrics
from alert_worker.models import DeliveryResult
from alert_worker.poison import PoisonQueue
from alert_worker.rate_limit import RateLimiter
from alert_worker.retry import RetryPolicy
from alert_worker.rq_jobs import RqEnqueuer
from alert_worker.settings import Settings
from alert_worker.store import DeliveryStore
from alert_worker.validation import validate_job_arguments

DB_CONNECT_TIMEOUT_SECONDS = 5


@dataclass
class JobResources:
    """The connections a job uses. ``close`` closes the database first, then Redis.

    ``owned`` is False for process-scoped resources: a job must not close what the next job reuses;
    they are closed once, at process exit.
    """

    pool: ConnectionPool
    redis: redis.Redis
    owned: bool = True

    def close(self) -> list[BaseException]:
        if not self.owned:
            return []
        return self.close_now()

    def close_now(self) -> list[BaseException]:
        errors: list[BaseException] = []
        for close in (self.pool.close, self.redis.close):
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - collected and raised together by the caller
                errors.append(exc)
        return errors


class JobPool(ConnectionPool):
    """A ``ConnectionPool`` for one job: it connects in the calling thread and starts no threads.

    A job is one thread making a few statements; the stock pool would start a scheduler and a worker
    thread, connect in the worker and join both on close, and each hand-off waits for a CPU on a busy
    host. This overrides psycopg_pool 3.3 internals (pinned in requirements.txt; guarded by
    tests/integration/test_resource_scope.py): no threads, no initial connection, a connection made
    on first use, and a broken one replaced by the next use instead of a background task.
    """

    def _start_workers(self) -> None:
        pass

    def _start_initial_tasks(self) -> None:
        pass

    def _get_ready_connection(self, timeout: float | None) -> Connection[Any] | None:
        conn = super()._get_ready_connection(timeout)
        if conn is None and self._nconns < self.max_size:  # called under the pool's lock
            conn = self._connect(timeout=timeout)
            self._nconns += 1
        return conn

    def run_task(self, task: MaintenanceTask) -> None:
        if isinstance(task, AddConnection):  # a broken connection was dropped: the next use reconnects
            with self._lock:
                self._nconns -= 1
        elif isinstance(task, ReturnConnection):
            task._run(self)
        # Nothing else is scheduled without worker threads.


def open_pool(settings: Settings, *, check: bool = False) -> ConnectionPool:
    """The process-scope pool: one connection, kept warm by psycopg_pool's own worker thread.

    ``check=True`` tests a pooled connection before handing it out, so a connection broken by a
    database restart is replaced instead of failing the next job.
    """
    return ConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=1,
        num_workers=1,
        timeout=settings.send_timeout_seconds,
        kwargs={"connect_timeout": DB_CONNECT_TIMEOUT_SECONDS, "autocommit": True},
        check=ConnectionPool.check_connection if check else None,
        open=True,
    )


def open_job_pool(settings: Settings) -> JobPool:
    """The per-job pool: at most one connection, opened on first use in the job's own thread."""
    return JobPool(
        settings.database_url,
        min_size=0,
        max_size=1,
        timeout=settings.send_timeout_seconds,
        kwargs={"connect_timeout": DB_CONNECT_TIMEOUT_SECONDS, "autocommit": True},
        open=True,
    )


def open_redis(settings: Settings) -> redis.Redis:
    """RESP2 and no ``CLIENT SETINFO``: one handshake round trip (``SELECT``) instead of five.

    redis-py retries a command once the connection is found broken, reconnecting (its default
    ``Retry``), so a process-scoped client survives a Redis restart.
    """
    timeout = max(settings.send_timeout_seconds, 1.0)
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        protocol=2,
        driver_info=None,
    )


def open_job_resources(settings: Settings) -> JobResources:
    pool = open_job_pool(settings)
    try:
        client = open_redis(settings)
    except BaseException:
        pool.close()
        raise
    return JobResources(pool=pool, redis=client)


# pid -> that process's resources. Keyed by pid so a forked child never uses (or closes) its parent's
# pool and sockets; a parent's entry stays referenced in the child so it is never garbage-collected there.
_process_resources: dict[int, JobResources] = {}


def process_resources(settings: Settings) -> JobResources:
    """``ALERT_RESOURCE_SCOPE=process``: one pool and Redis client per process, made after any fork."""
    pid = os.getpid()
    found = _process_resources.get(pid)
    if found is None:
        pool = open_pool(settings, check=True)
        try:
            client = open_redis(settings)
        except BaseException:
            pool.close()
            raise
        found = _process_resources[pid] = JobResources(pool=pool, redis=client, owned=False)
    return found


def close_process_resources() -> list[BaseException]:
    """Close this process's shared resources (worker shutdown); a no-op in any other process."""
    found = _process_resources.pop(os.getpid(), None)
    return found.close_now() if found is not None else []


atexit.register(close_process_resources)  # a forked RQ work-horse leaves by os._exit and skips this


def open_resources_for(settings: Settings) -> JobResources:
    """The resources one job runs on, per ``settings.resource_scope``."""
    if settings.resource_scope == "process":
        return process_resources(settings)
    return open_job_resources(settings)


def build_executor(settings: Settings, resources: JobResources) -> DeliveryExecutor:
    """Wire one job's collaborators; tests build ``DeliveryExecutor`` directly with fakes."""
    store = DeliveryStore(pool=resources.pool, stuck_after_seconds=settings.stuck_after_seconds)
    prefix = settings.redis_key_prefix
    return DeliveryExecutor(
        store=store,
        poison_queue=PoisonQueue(store=store, gauge=poison_count(resources.redis, prefix)),
        limiter=RateLimiter(client=resources.redis, key_prefix=prefix),
        channel_factory=lambda channel: build_channel(channel, settings),
        scheduler=RqEnqueuer(connection=resources.redis, job_timeout_seconds=settings.job_timeout_seconds),
        retry_policy=RetryPolicy(
            max_attempts=settings.max_attempts,
            delays=settings.retry_delays,
            max_retry_delay_seconds=settings.max_retry_delay_seconds,
        ),
        rate_limits=settings.rate_limits,
        queue_depth=queue_depth(resources.redis, prefix),
        hash_secret=store.recipient_hash_secret(settings.recipient_hash_secret),
        max_defer_seconds=settings.max_defer_seconds,
        metrics=RedisMetrics(client=resources.redis, prefix=prefix),
    )


@contextmanager
def closing_resources(resources: JobResources) -> Iterator[JobResources]:
    """Close everything on the way out; a close failure never hides the delivery's own error.

    One close fails: it is raised. Both fail: an ``ExceptionGroup`` (database first). The delivery
    raised and a close failed too: both are raised together in one group, the delivery's error first.
    """
    try:
        yield resources
    except BaseException as primary:
        errors = resources.close()
        if errors:
            raise BaseExceptionGroup("delivery failed and closing its resources failed", [primary, *errors]) from None
        raise
    errors = resources.close()
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise BaseExceptionGroup("closing the job's resources failed", errors)


def _origin_queue(settings: Settings) -> str:
    job = get_current_job()
    return job.origin if job is not None else settings.queues[0]


def run_delivery_job(
    request: DeliveryRequest,
    *,
    settings: Settings,
    open_resources: Callable[[Settings], JobResources] = open_resources_for,
    make_executor: Callable[[Settings, JobResources], Any] = build_executor,
) -> DeliveryResult:
    """One delivery; job-scoped resources are closed on the way out, process-scoped ones are kept."""
    with closing_resources(open_resources(settings)) as resources:
        result: DeliveryResult = make_executor(settings, resources).run(request)
    return result


def execute_delivery_job(
    delivery_id: str,
    channel: str,
    recipient: str,
    subject: str,
    body: str,
    attempt: int = 0,
) -> DeliveryResult:
    """Deliver one alert at most once per claim; see CONTRACT §1 for arguments and the result.

    Raises ``ValueError`` for a bad ``delivery_id``, ``channel`` or ``attempt`` before any I/O; every
    other bad input ends as a poisoned delivery. Never sleeps: retries and deferrals go to RQ's scheduler.
    """
    delivery_id, channel_type, attempt = validate_job_arguments(delivery_id, channel, attempt)
    settings = Settings.from_env()
    ensure_logging(settings.log_format)
    request = DeliveryRequest(
        delivery_id=delivery_id,
        channel=channel_type,
        recipient=recipient,
        subject=subject,
        body=body,
        attempt=attempt,
        queue=_origin_queue(settings),
    )
    return run_delivery_job(request, settings=settings)


def main(argv: list[str] | None = None) -> int:
    """``alert-worker`` / ``python -m alert_worker``: the CLI, whose default command runs the worker."""
    from alert_worker.cli import main as cli_main

    return cli_main(argv)
