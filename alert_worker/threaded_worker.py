"""The thread-pooled RQ worker (``alert-worker run``): up to N deliveries at once in one process.

Design (docs/design.md has the evidence): one ``rq`` worker that hands each dequeued job to a
pool of N daemon threads, built on rq 3.0's multi-execution model — ``prepare_execution`` registers an
``Execution`` per job (StartedJobRegistry, the worker's executions set) and ``perform_job(job, queue,
execution)`` runs it and records Finished/Failed, so RQ sees every job as under ``rq.Worker``. The worker
dequeues only while a thread is free (no eager dequeue), registers once (``rq info``, one scheduler, one
pubsub thread), and runs each job under a ``TimerDeathPenalty`` whose exception ends in the failed
registry through ``perform_job``'s own handler. Threads cannot be killed, so every blocking call a
delivery makes carries its own bound (send timeout, Postgres ``connect_timeout``/``statement_timeout``,
pool wait, Redis socket timeouts); the timer is the backstop for Python-level stalls only.

The threads share one ``psycopg_pool.ConnectionPool`` (one connection per thread at most) and one Redis
client, handed to ``run_delivery_job`` as ``JobResources(owned=False)`` through ``shared_job_resources``.
Each thread keeps its channel objects and their provider sessions (``channels.kept``) until it ends.
SIGTERM: no new job, the ones in flight finish, exit 0. A second SIGTERM, or a SIGINT: exit at once.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import redis
import structlog
from psycopg_pool import ConnectionPool
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import TimerDeathPenalty
from rq.worker import BaseWorker, WorkerStatus
from rq.worker_registration import REDIS_WORKER_KEYS as RQ_WORKERS_KEY

from alert_worker.channels import build_channel
from alert_worker.channels.kept import ThreadChannels, kept_channels
from alert_worker.connect import bounded_postgres_kwargs
from alert_worker.liveness import Registration, alive_ttl_for, worker_name
from alert_worker.resources import JobResources, open_redis, shared_job_resources
from alert_worker.rq_guard import StopSafeMixin
from alert_worker.settings import MAX_WORKER_THREADS, Settings

log = structlog.get_logger("alert_worker.threaded_worker")

MAX_THREADS = MAX_WORKER_THREADS  # docs/contract.md §6.1: 1..64
RQ_WORKER_TTL_SECONDS = 60
_DRAIN_MARGIN_SECONDS = 30.0
_HEARTBEAT_EVERY_SECONDS = 5.0  # past the job timeout: the death penalty has fired by then
_SUSPENSION_CHECK_EVERY_SECONDS = 1.0  # between back-to-back jobs; after a dequeue that waited, always
_QUICK_DEQUEUE_SECONDS = 0.1


def resolve_threads(settings: Settings, override: int | None = None) -> int:
    """``--threads`` if given (``ValueError`` outside 1..64), else ``Settings.worker_threads`` (checked there)."""
    if override is None:
        return settings.worker_threads
    if not 1 <= override <= MAX_THREADS:
        raise ValueError(f"--threads must be 1..{MAX_THREADS}, got {override}")
    return override


class DaemonTimerDeathPenalty(TimerDeathPenalty):
    """rq's thread-safe job timeout, with a daemon timer so a cold exit is never held up by one."""

    def new_timer(self) -> threading.Timer:
        timer: threading.Timer = super().new_timer()  # type: ignore[no-untyped-call]
        timer.daemon = True
        return timer


def open_shared_resources(settings: Settings, *, threads: int) -> JobResources:
    """One stock pool for all threads: each blocking step bounded (connect, statement, lock, pool wait)."""
    bound_ms = int(max(settings.send_timeout_seconds, 1.0) * 1000)
    pool = ConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=threads,
        timeout=settings.send_timeout_seconds,
        kwargs=bounded_postgres_kwargs(settings, bound_ms),
        check=ConnectionPool.check_connection,
        name="alert-worker-threads",
        open=True,
    )
    try:
        client = open_redis(settings)
    except BaseException:
        pool.close()
        raise
    return JobResources(pool=pool, redis=client, owned=False)


class ThreadPoolWorker(StopSafeMixin, BaseWorker):
    """An RQ worker that runs up to ``threads`` jobs at once, each in its own thread of this process."""

    death_penalty_class = DaemonTimerDeathPenalty

    def __init__(self, queues: Any, *, settings: Settings, threads: int, **kwargs: Any) -> None:
        kwargs.setdefault("log_job_description", False)
        # RQ raises its connection's socket timeout to worker_ttl - 5 (its blocking dequeue); job threads use
        # that connection for RQ's bookkeeping, so keep it near a minute instead of RQ's default seven.
        kwargs.setdefault("worker_ttl", RQ_WORKER_TTL_SECONDS)
        kwargs.setdefault("name", worker_name())  # host.pid.random: placeable, unlike RQ's random hex
        super().__init__(queues, **kwargs)
        if not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"threads must be 1..{MAX_THREADS}, got {threads}")
        self.settings = settings
        self.threads = threads
        self._tasks: queue.Queue[tuple[Job, Queue, Any] | None] = queue.Queue()
        self._slots = threading.Condition()
        self._in_flight = 0
        self._cold = False
        self._resources: JobResources | None = None
        self.channels = ThreadChannels(build=lambda channel: build_channel(channel, settings, kept=True))
        self._registration: Registration | None = None
        self._pool_threads: list[threading.Thread] = []
        self._last_beat = -_HEARTBEAT_EVERY_SECONDS
        self._last_suspension_check = -_SUSPENSION_CHECK_EVERY_SECONDS
        self._dequeue_started = 0.0
        self._shown_state: str = WorkerStatus.STARTED

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- lifecycle -------------------------------------------------------------------------------
    def work(self, burst: bool = False, *args: Any, **kwargs: Any) -> bool:
        """Open the shared connections, register, start the threads; close them all on the way out."""
        self._resources = open_shared_resources(self.settings, threads=self.threads)
        self._registration = Registration(
            client=self._resources.redis,
            prefix=self.settings.redis_key_prefix,
            name=self.name,
            threads=self.threads,
            in_flight=lambda: self._in_flight,
            alive_ttl_seconds=alive_ttl_for(self.settings.job_timeout_seconds),
            after_beat=self.register_again_if_forgotten,
        )
        try:
            self._registration.start()
            for i in range(self.threads):
                thread = threading.Thread(target=self._run_jobs, name=f"alert-job-{i}", daemon=True)
                thread.start()
                self._pool_threads.append(thread)
            return bool(super().work(burst, *args, **kwargs))
        finally:
            self._close()

    def _close(self) -> None:
        if self._registration is not None:
            self._registration.close(clean=not self._cold)
        if not self._cold:
            for _ in self._pool_threads:
                self._tasks.put(None)
            for thread in self._pool_threads:
                thread.join(timeout=5)
        for exc in self.channels.close_all() if not self._cold else []:
            log.warning("channel_close_failed", error=type(exc).__name__)
        if self._resources is not None:
            for exc in self._resources.close_now():
                log.warning("shared_resources_close_failed", error=type(exc).__name__)

    def teardown(self) -> None:
        """Drain first (a warm stop or an empty burst), then RQ's own teardown (scheduler, death, pubsub)."""
        try:
            drain = self.settings.job_timeout_seconds + _DRAIN_MARGIN_SECONDS
            if not self._cold and not self._wait(lambda: self._in_flight == 0, drain):  # §7.3: left for the reclaim
                log.error("drain_timed_out", worker=self.name, in_flight=self._in_flight, waited_seconds=drain)
        finally:  # a cold stop during the drain still stops the scheduler process and registers death
            super().teardown()  # type: ignore[no-untyped-call]

    # -- signals (RQ installs request_stop for SIGINT and SIGTERM) ---------------------------------
    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            self.request_force_stop(signum, frame)
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    def handle_warm_shutdown_request(self) -> None:
        super().handle_warm_shutdown_request()  # RQ's own log line
        self._stopping.set()
        log.info("worker_stopping", worker=self.name, in_flight=self._in_flight)
        with self._slots:
            self._slots.notify_all()

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        """Exit at once: the deliveries in flight are left claimed; the dead-worker reclaim recovers them."""
        self._cold = True
        self.log.warning("Worker %s: cold shut down", self.name)
        log.warning("worker_cold_stop", worker=self.name, in_flight=self._in_flight, signal=signum)
        raise SystemExit(1)

    # -- dequeue and hand-off --------------------------------------------------------------------
    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        """In burst mode, an empty queue ends the loop only once nothing is in flight (a job may enqueue)."""
        while True:
            result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            if result is not None or timeout is not None or self._in_flight == 0 or self._stopping.is_set():
                return result
            seen = self._in_flight
            self._wait(self._fewer_than(seen), None)

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Register the execution, hand the job to a thread, return once a thread is free (or stopping)."""
        execution = self.prepare_execution(job)
        with self._slots:
            self._in_flight += 1
        self._tasks.put((job, queue, execution))
        self._wait(lambda: self._in_flight < self.threads or self._stopping.is_set(), None)

    def _fewer_than(self, seen: int) -> Callable[[], bool]:
        return lambda: self._in_flight < seen or self._stopping.is_set()

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's loop beats the worker key three or four times per job (three round trips each), on the one
        thread that dequeues for all N: measured as half its time. A bare beat within
        ``_HEARTBEAT_EVERY_SECONDS`` of the last one is skipped (the key's TTL is ``worker_ttl + 60``);
        a beat with an explicit TTL or inside a pipeline always goes through."""
        if timeout is None and pipeline is None:
            now = time.monotonic()
            if now - self._last_beat < _HEARTBEAT_EVERY_SECONDS:
                return
            self._last_beat = now
        super().heartbeat(timeout, pipeline)

    def check_for_suspension(self, burst: bool) -> None:
        """RQ asks Redis on every loop, i.e. per job, on the one dequeue thread: at most once a second while
        jobs come back to back. After a dequeue that waited (an idle worker, or one waiting for a free thread)
        it always asks, so a worker that took one job after `rq suspend` takes no second one."""
        now = time.monotonic()
        back_to_back = now - self._dequeue_started < _QUICK_DEQUEUE_SECONDS
        if back_to_back and now - self._last_suspension_check < _SUSPENSION_CHECK_EVERY_SECONDS:
            return
        self._last_suspension_check = now
        super().check_for_suspension(burst)

    def set_state(self, state: str, pipeline: Any = None) -> None:
        """RQ marks the worker idle before every dequeue (a round trip per job): skipped while jobs run in
        other threads, as the worker is busy; the thread ending the last job in flight marks it idle."""
        if state == WorkerStatus.IDLE:  # RQ asks for idle as each dequeue starts
            self._dequeue_started = time.monotonic()
        if pipeline is None and state == WorkerStatus.IDLE and self._in_flight > 0:
            return
        super().set_state(state, pipeline)
        self._shown_state = state  # what rq info shows (get_state answers busy: rq_guard.StopSafeMixin)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """Like SimpleWorker: the started-registry entry outlives the job (the timer bounds the job)."""
        if job.timeout == -1:
            return int(self.worker_ttl)
        return int(job.timeout or self.worker_ttl) + 60

    def _wait(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Wait on the slot condition; heartbeat RQ's worker key (outside the lock) while blocked."""
        beat = max(1.0, min(15.0, self.worker_ttl / 4))
        waited = 0.0
        while True:
            with self._slots:
                if done():
                    return True
                if timeout is not None and waited >= timeout:
                    return False
                notified = self._slots.wait(beat)
            if not notified:
                waited += beat
                self._safe_heartbeat()
            self.keep_scheduler()

    def _safe_heartbeat(self) -> None:
        try:
            self.heartbeat()
        except (redis.RedisError, OSError) as exc:
            log.warning("rq_heartbeat_failed", worker=self.name, error=type(exc).__name__)

    def _run_jobs(self) -> None:
        shared_job_resources.set(self._resources)  # this thread's context: run_delivery_job uses the shared pair
        kept_channels.set(self.channels)  # and build_executor this thread's kept channel objects
        try:
            self._take_jobs()
        finally:
            for exc in self.channels.close_thread():
                log.warning("channel_close_failed", error=type(exc).__name__)

    def _take_jobs(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            job, job_queue, execution = task
            try:
                self.perform_job(job, job_queue, execution)  # records Finished/Failed itself
            except BaseException as exc:  # noqa: BLE001 - a late timeout exception must not kill the thread
                log.error("job_thread_error", job_id=job.id, error=type(exc).__name__)
            finally:
                with self._slots:
                    self._in_flight -= 1
                    idle = self._in_flight == 0
                    self._slots.notify_all()
                if idle:
                    self._mark_idle()

    def register_again_if_forgotten(self) -> None:
        """Redis lost RQ's registration (FLUSHDB, a failover to an empty replica) while this worker runs:
        register again, so ``rq info``, rq-dashboard and exporters see it. Checked at every liveness beat."""
        if self._stopping.is_set() or self.connection.sismember(RQ_WORKERS_KEY, self.key):
            return
        self.connection.delete(self.key)  # a heartbeat may have left a partial hash; register_birth needs none
        self.register_birth()  # type: ignore[no-untyped-call]
        self.set_state(WorkerStatus.BUSY if self._in_flight else WorkerStatus.IDLE)
        log.warning("worker_registered_again", worker=self.name, detail="RQ's worker registration was gone")

    def _mark_idle(self) -> None:  # the last job in flight ended: the worker is idle for rq info
        if self._shown_state == WorkerStatus.SUSPENDED:  # `rq suspend` was seen: rq info keeps saying so
            return
        try:
            self.set_state(WorkerStatus.IDLE)
        except (redis.RedisError, OSError) as exc:
            log.warning("rq_state_failed", worker=self.name, error=type(exc).__name__)
