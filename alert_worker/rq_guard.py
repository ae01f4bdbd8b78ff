"""RQ edge 2, what every worker this package runs adds to RQ's loop (docs/contract.md §7.4, §7.5).

- **A warm stop never strands a dequeued job.** RQ's SIGTERM handler raises its stop exception from
  wherever the main thread is whenever the worker's state reads idle, and RQ reads idle from before its
  ``BLMOVE`` until ``prepare_execution``: a stop landing after the move left the job in
  ``rq:queue:<q>:intermediate``, neither run nor queued. Here the state RQ's handler reads is always busy,
  so the handler only records the stop; the dequeue waits in slices of at most ``DEQUEUE_SLICE_SECONDS``
  and returns nothing once the stop is seen. A job the dequeue took after the stop goes back to the head of
  its queue; one it took before is handed on and runs (or drains) as any other.
- **The scheduler comes back.** RQ's scheduler process dies on a Redis error and RQ restarts it only at its
  next maintenance pass (10 min). Every ``SCHEDULER_CHECK_SECONDS`` while dequeuing or waiting, a worker
  whose scheduler process is gone (or never started: another held the locks) asks RQ to take the locks and
  start it (``acquire_locks(auto_start=True)``, RQ's own restart path), and records whether each queue's lock
  is held (``liveness.observe_scheduler_locks``). A dead worker's locks expire in 61 s; another takes them then.
- **Children die with the worker** (``ChildGuard``): every process forked from the worker closes the
  worker's listening sockets; every one but a work-horse (bounded by its own job timeout) gets
  ``PR_SET_PDEATHSIG`` = SIGTERM and a parent-pid poll, so a ``kill -9`` of the worker takes its scheduler
  with it and a restarted worker binds the same metrics port.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import structlog
from rq.exceptions import DequeueTimeout
from rq.worker import WorkerStatus

from alert_worker.rq_jobs import MOVE_BACK_SCRIPT

log = structlog.get_logger("alert_worker.rq_guard")

DEQUEUE_SLICE_SECONDS = 1  # a warm stop ends an idle dequeue within this
SCHEDULER_CHECK_SECONDS = 5.0
MAX_REDIS_WAIT_SECONDS = 5.0  # backoff cap while Redis is away: it is noticed back within this
PARENT_POLL_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
RQ_SCHEDULER_PROCESS_NAME = "Scheduler"  # rq.scheduler.RQScheduler.start (pinned by a test)


class StopSafeMixin:
    """Mixed in before an RQ worker class (``ThreadPoolWorker``, ``guarded(rq.worker.Worker)``)."""

    # Provided by RQ's BaseWorker.
    connection: redis.Redis
    queues: list[Any]
    scheduler: Any
    name: str
    log: Any
    queue_class: Any
    job_class: Any
    serializer: Any
    death_penalty_class: Any
    should_run_maintenance_tasks: bool
    log_job_description: bool

    def __init__(self, *args: Any, scheduler_seen: Callable[[], object] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stopping = threading.Event()
        self._burst = False
        self._scheduler_checked = -SCHEDULER_CHECK_SECONDS
        self._scheduler_seen = scheduler_seen
        self.forking_horse = False  # read by ChildGuard: a fork now is a work-horse

    def work(self, burst: bool = False, *args: Any, **kwargs: Any) -> bool:
        self._burst = burst
        return bool(super().work(burst, *args, **kwargs))  # type: ignore[misc]

    @property
    def stop_requested(self) -> bool:
        """A warm stop was asked for (SIGTERM, SIGINT)."""
        return self._stopping.is_set()

    def get_state(self) -> str:
        """Busy, always: RQ's SIGTERM handler then only records the stop (see the module docstring)."""
        return WorkerStatus.BUSY.value

    def handle_warm_shutdown_request(self) -> None:
        super().handle_warm_shutdown_request()  # type: ignore[misc]
        if not self._stopping.is_set():  # RQ's own line is INFO, quiet by default (ALERT_RQ_LOG_LEVEL)
            log.warning("warm_stop_requested", worker=self.name, detail="no new job; the ones in flight finish")
        self._stopping.set()

    # RQ calls these two at the top of its loop too, where a Redis error makes it quit: here the dequeue
    # below waits for Redis instead (the supervisor restarts a worker only for errors elsewhere).
    def check_for_suspension(self, burst: bool) -> None:
        try:
            super().check_for_suspension(burst)  # type: ignore[misc]
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("redis_unreachable_retrying", worker=self.name, error=type(exc).__name__, retry_in=0)

    def run_maintenance_tasks(self) -> None:
        try:
            super().run_maintenance_tasks()  # type: ignore[misc]
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("redis_unreachable_retrying", worker=self.name, error=type(exc).__name__, retry_in=0)

    def execute_job(self, job: Any, queue: Any) -> None:
        self.forking_horse = True
        try:
            super().execute_job(job, queue)  # type: ignore[misc]
        finally:
            self.forking_horse = False

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        """RQ's dequeue (heartbeat, maintenance, ``dequeue_any``, its log line), in slices, stop-aware."""
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):  # the loop below waits for Redis
            self.set_state(WorkerStatus.IDLE)  # type: ignore[attr-defined]
        idle_since = time.monotonic()
        wait = 1.0
        while not self._stopping.is_set():
            try:
                self.heartbeat()  # type: ignore[attr-defined]
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                self.keep_scheduler()
                result = self.queue_class.dequeue_any(
                    self.queues,
                    None if timeout is None else DEQUEUE_SLICE_SECONDS,
                    connection=self.connection,
                    job_class=self.job_class,
                    serializer=self.serializer,
                    death_penalty_class=self.death_penalty_class,
                )
                wait = 1.0
            except DequeueTimeout:
                result = None
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("redis_unreachable_retrying", worker=self.name, error=type(exc).__name__, retry_in=wait)
                self._stopping.wait(wait)
                wait = min(wait * 2, MAX_REDIS_WAIT_SECONDS)
                continue
            if result is not None and self._stopping.is_set() and self._give_back(*result):
                return None  # the stop came while the dequeue waited: the job goes back to the queue's head
            if result is not None:
                job, queue = result
                job.redis_server_version = self.get_redis_server_version()  # type: ignore[attr-defined]
                if self.log_job_description:
                    self.log.info("Worker %s: %s: %s (%s)", self.name, queue.name, job.description, job.id)
                else:
                    self.log.info("Worker %s: %s: %s", self.name, queue.name, job.id)
                self.heartbeat()  # type: ignore[attr-defined]
                return result
            if timeout is None or (max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time):
                return None
        return None

    def _give_back(self, job: Any, queue: Any) -> bool:
        """Undo a dequeue (out of the intermediate list, or popped from a multi-queue ``BLPOP``); ``False``
        if Redis refused, and the job is run instead."""
        try:
            if not self.connection.eval(MOVE_BACK_SCRIPT, 2, queue.intermediate_queue_key, queue.key, job.id):
                self.connection.lpush(queue.key, job.id)
        except (redis.RedisError, OSError):
            return False
        return True

    def keep_scheduler(self) -> None:
        """At most every ``SCHEDULER_CHECK_SECONDS``: restart RQ's scheduler if its process is gone."""
        if self.scheduler is None or self._burst or self._stopping.is_set():
            return
        now = time.monotonic()
        if now - self._scheduler_checked < SCHEDULER_CHECK_SECONDS:
            return
        self._scheduler_checked = now
        horse, self.forking_horse = self.forking_horse, False  # a scheduler forked here is no work-horse
        try:
            if not scheduler_process_alive():  # as RQ's maintenance decides, with public names
                self.scheduler.acquire_locks(auto_start=True)
            if self._scheduler_seen is not None:
                self._scheduler_seen()
        except (redis.RedisError, OSError) as exc:
            log.warning("scheduler_check_failed", worker=self.name, error=type(exc).__name__)
        finally:
            self.forking_horse = horse


def scheduler_process_alive() -> bool:
    """Whether RQ's scheduler process (a ``multiprocessing`` child named ``Scheduler``) runs; reaps it if not."""
    return any(child.name == RQ_SCHEDULER_PROCESS_NAME for child in multiprocessing.active_children())


def guarded(cls: type[Any]) -> type[Any]:
    """``cls`` (an RQ worker class) with ``StopSafeMixin`` in front."""
    if issubclass(cls, StopSafeMixin):
        return cls
    return type(cls.__name__, (StopSafeMixin, cls), {"__module__": cls.__module__, "__qualname__": cls.__qualname__})


class ChildGuard:
    """``os.register_at_fork`` hooks for the worker process; ``install`` once, ``add_listener`` any time."""

    def __init__(self, *, is_horse: Callable[[], bool] = lambda: False) -> None:
        self._listeners: list[socket.socket] = []
        self._is_horse = is_horse
        self._parent = os.getpid()
        self.active = False

    def install(self) -> ChildGuard:
        os.register_at_fork(before=self._before, after_in_child=self._after_in_child)
        self.active = True
        return self

    def add_listener(self, sock: socket.socket) -> None:
        self._listeners.append(sock)

    def set_horse_probe(self, is_horse: Callable[[], bool]) -> None:
        self._is_horse = is_horse

    def _before(self) -> None:
        self._parent = os.getpid()

    def _after_in_child(self) -> None:
        if not self.active:
            return
        self.active = False  # this child's own forks are its business
        for sock in self._listeners:
            with contextlib.suppress(OSError):
                sock.close()
        self._listeners = []
        if not self._is_horse():
            die_with_parent(self._parent)


def die_with_parent(parent_pid: int, *, sig: int = signal.SIGTERM) -> None:
    """In a freshly forked child: receive ``sig`` when the parent ends (Linux prctl, else a poll)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)
        return

    def poll() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os.kill(os.getpid(), sig)

    threading.Thread(target=poll, name="alert-parent-poll", daemon=True).start()
