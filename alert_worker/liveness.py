"""Worker registration and liveness in Redis, so the sweep can tell a dead claimant from a slow one.

A worker of this package registers as the hash ``alert:worker:<name>`` (``threads``, ``in_flight``,
``started_at``; a TTL of at least a day, refreshed; deleted on a clean exit) and keeps the key
``alert:worker:<name>:alive`` with a short TTL (at most 30 s) that a background thread refreshes at a
third of it. A ``kill -9`` stops the refreshes: the alive key expires and the sweep reclaims the rows
the worker had claimed (docs/contract.md §6.1). A claimant that never registered (plain ``rq worker``) is alive
while RQ's own worker key exists.

Imports no rq: RQ's worker-key prefix is written out in ``keys`` and pinned by a test against rq's own
constant. Every key comes from ``keys.RedisKeys``.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
import structlog

from alert_worker.keys import RQ_SCHEDULER_LOCK_KEY, RQ_WORKER_KEY_PREFIX, RedisKeys

log = structlog.get_logger("alert_worker.liveness")

REGISTRATION_TTL_SECONDS = 2 * 24 * 3600  # at least 24 h, refreshed with every alive beat
MAX_ALIVE_TTL_SECONDS = 30
MIN_ALIVE_TTL_SECONDS = 3


def worker_name() -> str:
    """``<host>.<pid>.<6 hex>``: an operator can place the worker (``rq info``, ``status``, ``claimed_by``);
    the random tail keeps it unique when a restarted container gets the same host name and PID."""
    host = socket.gethostname().split(".")[0] or "host"
    return f"{host}.{os.getpid()}.{secrets.token_hex(3)}"


def alive_ttl_for(job_timeout_seconds: int) -> int:
    """The alive key's TTL: the job timeout, kept within 3..30 s.

    A dead worker is noticed about as fast as a running job could have ended, and never later than
    30 s; refreshing every third of it keeps a busy-but-alive worker's key from lapsing.
    """
    return max(MIN_ALIVE_TTL_SECONDS, min(MAX_ALIVE_TTL_SECONDS, int(job_timeout_seconds)))


class WorkerKeys:
    """The Redis keys of one worker name under the package prefix (``alert:`` by default)."""

    def __init__(self, *, prefix: str, name: str) -> None:
        keys = RedisKeys(prefix)
        self.registration = keys.worker(name)
        self.alive = keys.worker_alive(name)
        self.rq_worker = f"{RQ_WORKER_KEY_PREFIX}{name}"


class Liveness:
    """Answers "is this claimant alive?" for the sweep; one Redis round trip per name."""

    def __init__(self, *, client: redis.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def is_alive(self, name: str) -> bool:
        keys = WorkerKeys(prefix=self._prefix, name=name)
        with self._client.pipeline(transaction=False) as pipe:
            pipe.exists(keys.alive)
            pipe.exists(keys.registration)
            pipe.exists(keys.rq_worker)
            alive, registered, rq_worker = pipe.execute()
        if registered or alive:
            return bool(alive)
        return bool(rq_worker)


class Registration:
    """Registers one worker and keeps its alive key fresh from a daemon thread until ``close``.

    ``in_flight`` is read at every beat (a callable, so the worker need not push counts). A failed
    beat is logged and retried at the next one; it never stops the worker.
    """

    def __init__(
        self,
        *,
        client: redis.Redis,
        prefix: str,
        name: str,
        threads: int,
        in_flight: Callable[[], int],
        alive_ttl_seconds: int = MAX_ALIVE_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
        after_beat: Callable[[], None] | None = None,
    ) -> None:
        if not 1 <= alive_ttl_seconds <= MAX_ALIVE_TTL_SECONDS:
            raise ValueError(f"alive_ttl_seconds must be 1..{MAX_ALIVE_TTL_SECONDS}, got {alive_ttl_seconds}")
        self._client = client
        self.keys = WorkerKeys(prefix=prefix, name=name)
        self._threads = threads
        self._in_flight = in_flight
        self._ttl = alive_ttl_seconds
        self._started_at = clock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._after_beat = after_beat  # e.g. the worker re-registering with RQ after Redis lost its keys

    @property
    def beat_interval_seconds(self) -> float:
        return self._ttl / 3

    def beat(self) -> None:
        """Write the registration and the alive key once (``start`` calls this before returning)."""
        fields: dict[Any, Any] = {
            "threads": self._threads,
            "in_flight": self._in_flight(),
            "started_at": f"{self._started_at:.3f}",
        }
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.registration, mapping=fields)
            pipe.expire(self.keys.registration, REGISTRATION_TTL_SECONDS)
            pipe.set(self.keys.alive, "1", ex=self._ttl)
            pipe.execute()

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._run, name="alert-liveness", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self.beat_interval_seconds):
            try:
                self.beat()
                if self._after_beat is not None:
                    self._after_beat()
            except (redis.RedisError, OSError) as exc:
                log.warning("liveness_beat_failed", error=type(exc).__name__)

    def close(self, *, clean: bool = True) -> None:
        """Stop beating; delete both keys (a clean exit, or a cold one: either way nothing runs here now)."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * self.beat_interval_seconds)
        try:
            self._client.delete(self.keys.alive, self.keys.registration)
        except (redis.RedisError, OSError) as exc:
            log.warning("liveness_unregister_failed", error=type(exc).__name__, clean=clean)


def scheduler_locks(client: redis.Redis, queues: Sequence[str]) -> dict[str, bool]:
    """Whether an RQ scheduler holds its lock for each queue: retries and deferrals will run."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.exists(RQ_SCHEDULER_LOCK_KEY.format(queue=queue))
    return {queue: bool(held) for queue, held in zip(queues, pipe.execute(), strict=True)}


SCHEDULER_MISSING_LIMIT_SECONDS = 60.0  # `alert-worker check` fails past this (docs/contract.md §7.5)


def observe_scheduler_locks(client: redis.Redis, prefix: str, queues: Sequence[str]) -> dict[str, float | None]:
    """Per queue, for how many seconds no scheduler has held its lock (``None`` while one does).

    A lock seen missing starts ``scheduler_missing_since`` (Redis server time, SET NX); a lock seen held
    deletes it. Every running worker of this package observes every ``SCHEDULER_CHECK_SECONDS`` and
    ``alert-worker check`` on each run, so the absence is timed from its first sighting by either.
    """
    keys = RedisKeys(prefix)
    held = scheduler_locks(client, queues)
    seconds, micros = client.time()
    now = float(seconds) + float(micros) / 1e6
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        if held[queue]:
            pipe.delete(keys.scheduler_missing_since(queue))
        else:
            pipe.set(keys.scheduler_missing_since(queue), f"{now:.3f}", nx=True, ex=7 * 24 * 3600)
            pipe.get(keys.scheduler_missing_since(queue))
    replies = iter(pipe.execute())
    missing: dict[str, float | None] = {}
    for queue in queues:
        next(replies)
        missing[queue] = None if held[queue] else max(0.0, now - float(next(replies) or now))
    return missing
