"""The thread-pooled RQ worker (``alert-worker run``): up to N deliveries at once in one process.

Design (docs/design.md has the evidence): one ``rq`` worker that hands each dequeued job to a
pool of N daemon threads, built on rq 3.0's multi-execution model — ``prepare_execution`` registers an
``Execution`` per job (StartedJobRegistry, the worker's executions set) and ``perform_job(job, queue,
execution)`` runs it and records Finished/Failed, so RQ sees every job as under ``rq.Worker``. The worker
dequeues only while a thread is free (no eager dequeue), registers once (``rq info``, one scheduler, one
pubsub thread), and runs each job under a ``TimerDeathPenalty`` whose exception ends in the failed
registry through ``perform_job``'s own handler. Threads cannot be killed, so every blocking call a
delivery makes carries its own bound (send timeout, Postgres ``connect_timeout``/``statement_timeout``,
pool wait, Redis socket timeouts); the timer is the backstop for Python-level stalls, and for a Postgres
call that nothing else bounds (a proxy that stops relaying while its kernel still ACKs and answers keepalives):
the shared pool records which thread holds which connection (``HELD_CONNECTIONS``), and when a thread's
timer fires it also shuts down the sockets of the connections that thread holds, so the blocked libpq call
returns and the exception is delivered; the pool discards the broken connection.

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
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

import psycopg
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
from alert_worker.sockets import cut_socket

log = structlog.get_logger("alert_worker.threaded_worker")

MAX_THREADS = MAX_WORKER_THREADS  # docs/contract.md §6.1: 1..64
RQ_WORKER_TTL_SECONDS = 60
_DRAIN_MARGIN_SECONDS = 30.0
_HEARTBEAT_EVERY_SECONDS = 5.0  # past the job timeout: the death penalty has fired by then
_SUSPENSION_CHECK_EVERY_SECONDS = 1.0  # between back-to-back jobs; after a dequeue that waited, always
_QUICK_DEQUEUE_SECONDS = 0.1
# After a thread's job timed out, a connection it still takes (the crash hand-back's write) is cut if held
# this long: a working database answers that write in milliseconds; a frozen one never does.
LATE_CALL_GRACE_SECONDS = 5.0


def resolve_threads(settings: Settings, override: int | None = None) -> int:
    """``--threads`` if given (``ValueError`` outside 1..64), else ``Settings.worker_threads`` (checked there)."""
    if override is None:
        return settings.worker_threads
    if not 1 <= override <= MAX_THREADS:
        raise ValueError(f"--threads must be 1..{MAX_THREADS}, got {override}")
    return override


class HeldConnections:
    """Which thread holds which Postgres connection of the threaded worker's pool (``ThreadHeldPool``).

    A process-wide registry holding weak references only (no client): ``DaemonTimerDeathPenalty`` finds the
    connections of the thread whose job timed out here, without being handed the pool. ``cut`` shuts their
    sockets down (``sockets.cut_socket`` on libpq's descriptor), which ends a libpq call blocked on a peer
    that never answers; until the job's penalty is cancelled, a connection that thread takes afterwards is
    cut too if it is held for ``grace`` seconds. A cut is made under the registry's lock, and ``release``
    takes it before a connection goes back to the pool, so no other thread's connection is ever cut.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, dict[int, weakref.ref[psycopg.Connection[Any]]]] = {}
        self._late: dict[int, float] = {}  # thread -> grace, while its timed-out job still runs

    def hold(self, conn: psycopg.Connection[Any]) -> None:
        thread = threading.get_ident()
        with self._lock:
            held = self._held.setdefault(thread, {})
            ref = held.get(id(conn))
            if ref is None or ref() is not conn:
                ref = held[id(conn)] = weakref.ref(conn)
            grace = self._late.get(thread)
        if grace is not None:
            timer = threading.Timer(grace, self._cut_if_still_held, (thread, ref))
            timer.daemon = True
            timer.start()

    def release(self, conn: psycopg.Connection[Any]) -> None:
        thread = threading.get_ident()
        with self._lock:
            held = self._held.get(thread)
            if held is not None:
                held.pop(id(conn), None)
                if not held:
                    del self._held[thread]

    def held_by(self, thread: int) -> int:
        with self._lock:
            return len(self._held.get(thread, {}))

    def cut(self, thread: int, *, grace: float = LATE_CALL_GRACE_SECONDS) -> int:
        """``thread``'s job timed out: shut down the sockets of the connections it holds; returns how many."""
        with self._lock:
            self._late[thread] = grace
            return sum(_cut_connection(ref) for ref in self._held.get(thread, {}).values())

    def spare(self, thread: int) -> None:
        """``thread``'s job ended: its later connections are its next job's, never cut for this one."""
        with self._lock:
            self._late.pop(thread, None)

    def _cut_if_still_held(self, thread: int, ref: weakref.ref[psycopg.Connection[Any]]) -> None:
        with self._lock:
            conn = ref()
            late = thread in self._late and conn is not None and self._held.get(thread, {}).get(id(conn)) is ref
            cut = late and _cut_connection(ref)
        if cut:
            log.warning("late_database_call_cut", detail="a timed-out job's database call outlived its grace")


def _cut_connection(ref: weakref.ref[psycopg.Connection[Any]]) -> bool:
    conn = ref()
    if conn is None or conn.closed:
        return False
    try:
        fd = conn.pgconn.socket
    except (psycopg.Error, OSError):
        return False
    return cut_socket(fd)


HELD_CONNECTIONS = HeldConnections()


class ThreadHeldPool(ConnectionPool):
    """The threaded worker's pool: a connection is in ``HELD_CONNECTIONS`` under the thread that took it,
    from its check (a pooled connection is tested in the taking thread, and that test can block too) until
    it is put back. A connection whose socket was cut is broken: ``putconn`` discards it."""

    def getconn(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        conn = super().getconn(timeout)
        HELD_CONNECTIONS.hold(conn)
        return conn

    def putconn(self, conn: psycopg.Connection[Any]) -> None:
        HELD_CONNECTIONS.release(conn)
        super().putconn(conn)


def check_held_connection(conn: psycopg.Connection[Any]) -> None:
    """``ConnectionPool.check_connection``, with the connection held by the checking thread meanwhile."""
    HELD_CONNECTIONS.hold(conn)
    try:
        ConnectionPool.check_connection(conn)
    except BaseException:
        HELD_CONNECTIONS.release(conn)  # the pool keeps or discards it; this thread does not get it
        raise


class DaemonTimerDeathPenalty(TimerDeathPenalty):
    """rq's thread-safe job timeout, with a daemon timer so a cold exit is never held up by one.

    When it fires it raises the job's exception in the job's thread (rq) and shuts down the sockets of the
    Postgres connections that thread holds (``HELD_CONNECTIONS``): an asynchronous exception is only
    delivered once a blocked C call returns, and this makes a blocked libpq call return.
    """

    thread_id: int | None = None

    def setup_death_penalty(self) -> None:
        self.thread_id = threading.get_ident()  # entered in the job's thread
        super().setup_death_penalty()  # type: ignore[no-untyped-call]

    def handle_death_penalty(self) -> None:
        try:
            super().handle_death_penalty()  # type: ignore[no-untyped-call]
        finally:
            if self.thread_id is not None and (cut := HELD_CONNECTIONS.cut(self.thread_id)):
                log.warning("job_timeout_cut_database_connections", connections=cut)

    def cancel_death_penalty(self) -> None:
        super().cancel_death_penalty()  # type: ignore[no-untyped-call]
        if self.thread_id is not None:
            HELD_CONNECTIONS.spare(self.thread_id)

    def new_timer(self) -> threading.Timer:
        timer: threading.Timer = super().new_timer()  # type: ignore[no-untyped-call]
        timer.daemon = True
        return timer


def open_shared_resources(settings: Settings, *, threads: int) -> JobResources:
    """One pool for all threads (``ThreadHeldPool``): each blocking step bounded (connect, statement, lock,
    pool wait), and a call on a connection that never answers cut when the job's timeout fires."""
    bound_ms = int(max(settings.send_timeout_seconds, 1.0) * 1000)
    pool = ThreadHeldPool(
        settings.database_url,
        min_size=1,
        max_size=threads,
        timeout=settings.send_timeout_seconds,
        kwargs=bounded_postgres_kwargs(settings, bound_ms),
        check=check_held_connection,
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
