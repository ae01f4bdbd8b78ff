"""Connections for jobs, operator commands and the sweeper: how they are opened, shared and closed.

Job scope (the default, docs/contract.md §1): each job opens a one-connection ``ConnectionPool`` and a Redis
client, and ``closing_resources`` closes both on the way out, even when the delivery raises. Process
scope (``ALERT_RESOURCE_SCOPE=process``): one checked pool and one client per process, made after any
fork (keyed by pid) and closed at exit. Operator commands and the sweeper thread use ``short_lived``:
the job-scope pair, for one command or one pass, so nothing with threads or locks is held across a
``fork()``. Enqueues go through ``enqueue_client``: one Redis client per process, because RQ caches its
Lua scripts per client object.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import redis
from psycopg_pool import ConnectionPool

from alert_worker.connect import postgres_kwargs, redis_client
from alert_worker.settings import Settings
from alert_worker.store import DeliveryStore


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
        kwargs=postgres_kwargs(settings),
        check=ConnectionPool.check_connection if check else None,
        open=True,
    )


def open_job_pool(settings: Settings) -> ConnectionPool:
    """The per-job pool: a stock ``ConnectionPool`` of one connection, opened at once by one worker thread.

    Public API only. bench/job_pool_choice.py measured it against ``min_size=0`` (connects on first
    use: slower), ``NullConnectionPool`` (a new connection per statement: ~3x slower) and a bare
    ``psycopg.connect`` (as fast, but not a pool, so the store could not take it). With Postgres down,
    ``connection()`` raises ``PoolTimeout`` after ``ALERT_SEND_TIMEOUT_SECONDS``.
    """
    return ConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=1,
        num_workers=1,
        timeout=settings.send_timeout_seconds,
        kwargs=postgres_kwargs(settings),
        open=True,
    )


def open_redis(settings: Settings) -> redis.Redis:
    """The package's Redis client (``connect.redis_client``: URL, TLS or Sentinel)."""
    return redis_client(settings)


# (pid, url) -> the client this process enqueues with. RQ 3.0 keeps its Lua scripts per client object
# (rq.scripts) for the life of the process: a client per enqueue would keep every one of them alive.
_enqueue_clients: dict[tuple[int, str], redis.Redis] = {}


def enqueue_client(settings: Settings) -> redis.Redis:
    """The one Redis client this process enqueues with (producer, follow-ups, sweep, replay, copies).

    Made after any fork (keyed by pid) and never closed by a job: redis-py reconnects it when broken.
    """
    key = (os.getpid(), settings.redis_url)
    found = _enqueue_clients.get(key)
    if found is None:
        found = _enqueue_clients[key] = open_redis(settings)
    return found


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


# Set in each job thread of the thread-pooled worker: the process's shared pool and client (owned=False).
shared_job_resources: ContextVar[JobResources | None] = ContextVar("shared_job_resources", default=None)


def open_resources_for(settings: Settings) -> JobResources:
    """The resources one job runs on: the thread-pooled worker's shared pair, else per ``resource_scope``."""
    shared = shared_job_resources.get()
    if shared is not None:
        return shared
    if settings.resource_scope == "process":
        return process_resources(settings)
    return open_job_resources(settings)


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


@dataclass
class Connections:
    """What an operator command or a sweep pass works with."""

    store: DeliveryStore
    database: ConnectionPool
    redis: redis.Redis


@contextmanager
def short_lived(settings: Settings) -> Iterator[Connections]:
    """One thread-free Postgres pool and one Redis client for one command or sweep pass, closed after."""
    resources = open_job_resources(settings)
    with closing_resources(resources):
        store = DeliveryStore(pool=resources.pool, stuck_after_seconds=settings.stuck_after_seconds)
        yield Connections(store=store, database=resources.pool, redis=resources.redis)
