"""The crash suite's machinery: private services, supervised worker processes, a producer, observers.

A ``Cluster`` owns one private PostgreSQL cluster, one private Redis and the fake providers for a whole
run. Each scenario opens a ``Run`` on it: a fresh database, an emptied Redis, fresh provider scripts,
``workers`` real worker processes (each in its own process group so parent, horses and scheduler die
together) and a supervisor that restarts a worker that exited (as systemd would). ``CRASH_WORKER``
selects the worker kind, judged the same way: ``threaded`` (the default: ``python -m alert_worker run``,
the thread-pooled worker, whose sweeper thread recovers lost jobs), ``forking`` (the same main with
``--worker-class rq.worker.Worker``) or ``rq`` (plain ``rq worker alerts --with-scheduler`` with a
harness thread calling ``alert_worker.sweep.sweep_once`` as the sweeper).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis
from rq import Queue, Worker
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from alert_worker.counters import poison_count, queue_depth
from alert_worker.liveness import Liveness
from alert_worker.models import ChannelType
from alert_worker.redaction import mask_recipient, recipient_hash
from alert_worker.resources import closing_resources, open_job_resources
from alert_worker.rq_jobs import FAILURE_TTL_SECONDS, JOB_FUNC, job_id_for
from alert_worker.settings import Settings
from alert_worker.store import DeliveryStore, NewDelivery
from alert_worker.sweep import sweep_once
from tests.crash.fake_providers import ProviderLog, running_smtp, running_twilio, running_webhook, tag
from tests.crash.private_services import PrivatePostgres, PrivateRedis
from tests.support.processes import WorkerProcess as SupportWorkerProcess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CRASH_FUNC = "tests.crash.jobs.execute_with_crash"
TERMINAL = ("delivered", "poison", "failed")
HASH_SECRET = "crash-suite-secret"


@dataclass(frozen=True)
class Delivery:
    """One alert the suite sends, what its provider will do, and how it must end."""

    id: str
    channel: str = "email"
    script: tuple[str, ...] = ()
    expect: str = "delivered"  # or "poison"
    crash: bool = False  # first job is tests.crash.jobs.execute_with_crash
    to: str | None = None  # a recipient shared with other deliveries (default: one of its own)


def slack_available() -> bool:
    """Slack is driven only once the real channel has landed (the placeholder raises on use)."""
    try:
        from alert_worker.channels import slack
    except ImportError:
        return False
    return "placeholder" not in (slack.__doc__ or "").lower()


class Cluster:
    """Private services and fake providers for one suite run; ``close()`` leaves nothing running."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="crash-suite-")
        self.postgres = PrivatePostgres()
        self.redis = PrivateRedis()
        self.provider = ProviderLog()
        self._stack = contextlib.ExitStack()
        self.smtp_port = 0
        self.webhook_base = ""
        self.twilio_base = ""

    def __enter__(self) -> Cluster:
        try:
            self.postgres.init()
            self.postgres.start()
            self.redis.start()
            self.smtp_port = self._stack.enter_context(running_smtp(self.provider))
            self.webhook_base = self._stack.enter_context(running_webhook(self.provider))
            self.twilio_base = self._stack.enter_context(running_twilio(self.provider))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stack.close()
        self.redis.close()
        self.postgres.close()
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)

    def service_restarts(self) -> int:
        return self.redis.restarts + self.postgres.restarts


class WorkerProcess(SupportWorkerProcess):
    """One worker in its own process group: ``python -m alert_worker run`` or ``rq worker alerts -s``.

    Crash-only on top of the shared one (``tests.support.processes``): a worker kind, and restarts under a
    new name each time (the supervisor's), all appending to one log file.
    """

    def __init__(self, index: int, env: dict[str, str], log_dir: str, mode: str) -> None:
        super().__init__(log_path=os.path.join(log_dir, f"worker-{index}.log"), env=env, cwd=ROOT)
        self.index = index
        self.mode = mode
        self.started_at = 0.0
        self.log_dir = log_dir
        self.generation = 0
        self.name = ""

    def start(self) -> None:
        self.generation += 1
        self.started_at = time.monotonic()
        self.name = f"crash-w{self.index}-g{self.generation}-{uuid.uuid4().hex[:6]}"
        main = [sys.executable, "-m", "tests.support.fake_twilio", self.env["CRASH_TWILIO_BASE"]]  # alert-worker
        if self.mode in ("threaded", "main"):  # the worker main: preflight, migrate, sweeper, thread pool
            command = [*main, "run"]
        elif self.mode == "forking":  # the same main with RQ's forking one-job-at-a-time Worker
            command = [*main, "run", "--worker-class", "rq.worker.Worker"]
        else:  # plain `rq worker alerts --with-scheduler` (job module preloaded); the harness sweeps
            command = [
                sys.executable,
                "-m",
                "tests.crash.rq_worker",
                "worker",
                "alerts",
                "--with-scheduler",
                "--url",
                self.env["REDIS_URL"],
                "--name",
                self.name,
                "--disable-job-desc-logging",
            ]
        self.launch(command)


@dataclass
class Event:
    """A fault that may legitimately cause one duplicate of ``delivery_id`` (kill after the send, ...)."""

    kind: str
    delivery_id: str


@dataclass
class Run:
    """One scenario's world; use as a context manager."""

    cluster: Cluster
    name: str
    workers: int = 3
    env_overrides: dict[str, str] = field(default_factory=dict)
    worker_database_url: Callable[[str], str] | None = None  # how workers reach Postgres (the harness: directly)
    sweep_interval: float = 1.0
    grace_seconds: int = 2
    mode: str = field(default_factory=lambda: os.environ.get("CRASH_WORKER", "threaded"))
    deliveries: list[Delivery] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    worker_restarts: int = 0
    sweep_errors: int = 0
    sweeps: int = 0

    def __post_init__(self) -> None:
        self.database = f"crash_{self.name}_{uuid.uuid4().hex[:8]}"
        self.log_dir = os.path.join(self.cluster.tmp, self.database)  # unique: one scenario may run twice
        os.makedirs(self.log_dir, exist_ok=True)
        self.crash_log = os.path.join(self.log_dir, "kills.log")
        self._procs: list[WorkerProcess] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._supervising = threading.Event()
        self._supervising.set()
        self.env: dict[str, str] = {}

    # -- set-up and tear-down -----------------------------------------------------------------------
    def __enter__(self) -> Run:
        c = self.cluster
        url = c.postgres.create_database(self.database)
        r = redis.Redis.from_url(c.redis.url)
        r.flushall()  # our private server: nothing else lives there
        r.close()
        c.provider.reset()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ALERT_", "SMTP_", "SLACK_", "TWILIO_"))}
        env.update(
            {
                "PYTHONPATH": ROOT,
                "DATABASE_URL": url,
                "REDIS_URL": c.redis.url,
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(c.smtp_port),
                "SMTP_SECURITY": "none",
                "ALERTS_FROM_EMAIL": "alerts@crash.test",
                "SLACK_WEBHOOK_HOSTS": "127.0.0.1",
                "SLACK_WEBHOOK_URL": f"{c.webhook_base}/services/T000/B000/crashsuite",
                "TWILIO_ACCOUNT_SID": "AC" + "c" * 32,
                "TWILIO_AUTH_TOKEN": "crashsuite" * 3,
                "TWILIO_FROM_NUMBER": "+15005550006",
                "CRASH_TWILIO_BASE": c.twilio_base,  # workers' Twilio client goes there (tests.support.fake_twilio)
                "ALERT_RECIPIENT_HASH_SECRET": HASH_SECRET,
                "ALERT_LOG_FORMAT": "json",
                "ALERT_SEND_TIMEOUT_SECONDS": "1",
                "ALERT_JOB_TIMEOUT_SECONDS": "2",
                "ALERT_STUCK_AFTER_SECONDS": "3",
                "ALERT_SWEEP_GRACE_SECONDS": str(self.grace_seconds),
                "ALERT_SWEEP_INTERVAL_SECONDS": str(self.sweep_interval),
                "ALERT_RETRY_DELAYS": "1",
                "ALERT_MAX_ATTEMPTS": "5",
                "ALERT_RATE_EMAIL_PER_MIN": "100000",
                "ALERT_RATE_SLACK_PER_MIN": "100000",
                "ALERT_RATE_SMS_PER_MIN": "100000",
                "ALERT_RATE_EMAIL_PER_RECIPIENT_HOUR": "100000",
                "ALERT_RATE_SLACK_PER_RECIPIENT_HOUR": "100000",
                "ALERT_RATE_SMS_PER_RECIPIENT_HOUR": "100000",
                "ALERT_RATE_GLOBAL_PER_MIN": "100000",
                "ALERT_TEST_CRASH_AT": "by-id",
                "ALERT_TEST_CRASH_LOG": self.crash_log,
            }
        )
        env.update(self.env_overrides)
        self.env = env
        self.settings = Settings.from_env(env)
        with closing_resources(open_job_resources(self.settings)) as res:
            DeliveryStore(pool=res.pool).migrate()
        try:
            worker_env = {**env, "DATABASE_URL": self.worker_database_url(url)} if self.worker_database_url else env
            for i in range(self.workers):
                proc = WorkerProcess(i, worker_env, self.log_dir, self.mode)
                proc.start()
                self._procs.append(proc)
            self._spawn(self._supervise, "crash-supervisor")
            if self.mode == "rq":  # main() runs its own sweeper thread (one cluster-wide, Redis lock)
                self._spawn(self._sweep_loop, "crash-sweeper")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        for proc in self._procs:
            proc.stop()
        with contextlib.suppress(Exception):
            self.cluster.postgres.drop_database(self.database)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- supervisor and sweeper -----------------------------------------------------------------------
    def _supervise(self) -> None:
        """Restart any worker that exited, like a process supervisor would."""
        while not self._stop.wait(0.2):
            if not self._supervising.is_set():
                continue
            for proc in self._procs:
                # at most one restart a second: a worker whose start-up check fails (database down) exits 1
                if not proc.alive() and not self._stop.is_set() and time.monotonic() - proc.started_at > 1.0:
                    proc.start()
                    self.worker_restarts += 1

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.sweep_interval):
            self.sweep()

    def sweep(self) -> None:
        """One ``sweep_once`` pass with short-lived connections (the servers may be down)."""
        try:
            with closing_resources(open_job_resources(self.settings)) as res:
                from alert_worker.rq_jobs import RqEnqueuer

                sweep_once(
                    store=DeliveryStore(pool=res.pool, stuck_after_seconds=self.settings.stuck_after_seconds),
                    enqueuer=RqEnqueuer(connection=res.redis, job_timeout_seconds=self.settings.job_timeout_seconds),
                    queue_depth=queue_depth(res.redis, self.settings.redis_key_prefix),
                    poison_gauge=poison_count(res.redis, self.settings.redis_key_prefix),
                    grace_seconds=self.settings.sweep_grace_seconds,
                    claimant_alive=Liveness(client=res.redis, prefix=self.settings.redis_key_prefix).is_alive,
                    dead_after_seconds=self.settings.job_timeout_seconds,
                )
            self.sweeps += 1
        except BaseException:
            self.sweep_errors += 1

    # -- producing -----------------------------------------------------------------------------------
    def produce(self, deliveries: list[Delivery]) -> None:
        """Record each row, then enqueue its first job (the producer's order: the row comes first)."""
        provider = self.cluster.provider
        for d in deliveries:
            provider.scripts[d.id] = list(d.script)
        self.deliveries.extend(deliveries)
        with closing_resources(open_job_resources(self.settings)) as res:
            store = DeliveryStore(pool=res.pool)
            queue = Queue("alerts", connection=res.redis)
            for d in deliveries:
                recipient = self.recipient(d)
                subject = f"crash suite {tag(d.id)}"
                body = f"delivery {d.id}"
                channel = ChannelType(d.channel)
                store.create(
                    NewDelivery(
                        id=d.id,
                        channel=d.channel,
                        recipient_masked=mask_recipient(channel, recipient),
                        recipient_hash=recipient_hash(HASH_SECRET, d.channel, recipient),
                        payload={"recipient": recipient, "subject": subject, "body": body},
                    )
                )
                queue.enqueue(
                    CRASH_FUNC if d.crash else JOB_FUNC,
                    d.id,
                    d.channel,
                    recipient,
                    subject,
                    body,
                    attempt=0,
                    job_id=job_id_for(d.id, "send"),
                    description=f"alert delivery {d.id}",
                    failure_ttl=FAILURE_TTL_SECONDS,
                    job_timeout=self.settings.job_timeout_seconds,
                )

    def enqueue_without_row(self, deliveries: list[Delivery]) -> list[str]:
        """A producer that skips ``send``: ``Queue.enqueue(execute_delivery_job, ...)`` with no row, RQ's own
        job id and timeout. Enqueued at the front so each one runs at once (while the fault lasts). Returns
        the job ids."""
        from alert_worker.entrypoint import execute_delivery_job

        provider = self.cluster.provider
        for d in deliveries:
            provider.scripts[d.id] = list(d.script)
        self.deliveries.extend(deliveries)
        conn = redis.Redis.from_url(self.cluster.redis.url, socket_timeout=5)
        try:
            queue = Queue("alerts", connection=conn)
            return [
                queue.enqueue(
                    execute_delivery_job,
                    d.id,
                    d.channel,
                    self.recipient(d),
                    f"crash suite {tag(d.id)}",
                    f"delivery {d.id}",
                    at_front=True,
                ).id
                for d in deliveries
            ]
        finally:
            conn.close()

    def recipient(self, d: Delivery) -> str:
        if d.to is not None:
            return d.to
        if d.channel == "slack":
            return ""  # the default webhook (SLACK_WEBHOOK_URL): our fake server
        if d.channel == "sms":  # one number per delivery, from the id's digits
            return "+1555" + "".join(ch for ch in d.id if ch.isdigit()).rjust(7, "0")[-7:]
        return f"{d.id}@rcpt.crash.test"

    # -- observing -----------------------------------------------------------------------------------
    def statuses(self) -> dict[str, str] | None:
        """Row status per delivery id, or ``None`` while the database cannot be asked."""
        try:
            with psycopg.connect(self.settings.database_url, connect_timeout=2) as conn:
                rows = conn.execute("SELECT id, status FROM alert_deliveries").fetchall()
        except psycopg.Error:
            return None
        return {r[0]: r[1] for r in rows}

    def terminal_count(self) -> int:
        found = self.statuses() or {}
        return sum(1 for s in found.values() if s in TERMINAL)

    def wait_until_terminal(self, timeout: float, *, at_least: int | None = None) -> bool:
        """Poll until every delivery (or ``at_least`` of them) is terminal; ``False`` at the deadline."""
        goal = len(self.deliveries) if at_least is None else at_least
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.statuses()
            if found is not None and sum(1 for d in self.deliveries if found.get(d.id) in TERMINAL) >= goal:
                return True
            time.sleep(0.2)
        return False

    def kills(self) -> list[Event]:
        """Self-kills recorded by ``tests.crash.jobs`` before each SIGKILL."""
        try:
            with open(self.crash_log) as fh:
                return [Event(*line.split()) for line in fh if line.strip()]
        except FileNotFoundError:
            return []

    def processes(self) -> list[WorkerProcess]:
        return list(self._procs)

    def pause_supervisor(self) -> None:
        self._supervising.clear()

    def resume_supervisor(self) -> None:
        self._supervising.set()

    def current_deliveries(self, proc: WorkerProcess) -> list[str]:
        """The deliveries the worker is running now, one per RQ execution (a threaded worker has many)."""
        conn = redis.Redis.from_url(self.cluster.redis.url, socket_timeout=2)
        try:
            pid = proc.process.pid if proc.process else -1
            worker = next((w for w in Worker.all(connection=conn) if w.pid == pid), None)
            if worker is None:
                return []
            job_ids = [e.job_id for e in worker.get_current_executions(refresh=True)]
            jobs = Job.fetch_many(job_ids, connection=conn)
            return [str(job.args[0]) for job in jobs if job is not None and job.args]
        except Exception:
            return []
        finally:
            conn.close()

    def failed_job_ids(self) -> set[str]:
        conn = redis.Redis.from_url(self.cluster.redis.url, socket_timeout=5)
        try:
            return set(FailedJobRegistry(queue=Queue("alerts", connection=conn)).get_job_ids())
        finally:
            conn.close()

    def started_job_ids(self) -> set[str]:
        """Jobs RQ says are running now."""
        conn = redis.Redis.from_url(self.cluster.redis.url, socket_timeout=5)
        try:
            return set(StartedJobRegistry(queue=Queue("alerts", connection=conn)).get_job_ids())
        finally:
            conn.close()

    def failed_jobs(self) -> list[tuple[str, str]]:
        """(delivery id, exception text) of every job RQ recorded as failed."""
        conn = redis.Redis.from_url(self.cluster.redis.url, socket_timeout=5)
        try:
            queue = Queue("alerts", connection=conn)
            ids = FailedJobRegistry(queue=queue).get_job_ids()
            found = []
            for job in Job.fetch_many(ids, connection=conn):
                if job is None:
                    continue
                result = job.latest_result()
                found.append((str(job.args[0]) if job.args else "", (result.exc_string if result else "") or ""))
            return found
        finally:
            conn.close()

    def finished_job_durations(self) -> list[float]:
        conn = redis.Redis.from_url(self.cluster.redis.url, socket_timeout=5)
        try:
            ids = FinishedJobRegistry(queue=Queue("alerts", connection=conn)).get_job_ids()
            return [
                (job.ended_at - job.started_at).total_seconds()
                for job in Job.fetch_many(ids, connection=conn)
                if job is not None and job.ended_at and job.started_at
            ]
        finally:
            conn.close()


@dataclass
class Outcome:
    """What one scenario measured, and what it found wrong (empty ``failures`` = passed)."""

    name: str
    deliveries: int = 0
    kills: int = 0
    forced: int = 0  # faults that struck between the provider's acceptance and the row write
    restarts: int = 0
    lost: int = 0
    duplicates: int = 0
    max_window_rate: int = 0
    limit: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"{self.name}: deliveries={self.deliveries} kills={self.kills} restarts={self.restarts} "
            f"lost={self.lost} duplicates={self.duplicates} forced={self.forced} "
            + (f"max_window_rate={self.max_window_rate} limit={self.limit} " if self.limit else "")
            + f"seconds={self.seconds:.1f} {'ok' if not self.failures else 'FAILED'}"
        )


def judge(run: Run, outcome: Outcome, *, finished: bool, events: list[Event]) -> Outcome:
    """The common verdict: every delivery ends as scripted, provider-side, with duplicates only from events.

    A delivery is *lost* when it should have been delivered and the provider never accepted it, or when it
    never reached a terminal state. A duplicate is an acceptance beyond the first; each must be explained by
    a fault event on that delivery (at most one duplicate per event).
    """
    statuses = run.statuses() or {}
    accepted = run.cluster.provider.accepted_counts()
    per_delivery_events = Counter(e.delivery_id for e in events)
    outcome.deliveries = len(run.deliveries)
    if not finished:
        outcome.failures.append("not every delivery reached a terminal state before the deadline")
    for d in run.deliveries:
        status = statuses.get(d.id)
        got = accepted.get(d.id, 0)
        if status not in TERMINAL:
            outcome.lost += 1
            outcome.failures.append(f"{d.id}: still {status} at the deadline")
            continue
        if d.expect == "delivered" and (status != "delivered" or got == 0):
            outcome.lost += 1
            outcome.failures.append(f"{d.id}: expected delivered, row {status}, provider accepted {got}")
        if status == "delivered" and got == 0:
            outcome.failures.append(f"{d.id}: row delivered but the provider never accepted it")
        if d.expect == "poison" and status != "poison":
            outcome.failures.append(f"{d.id}: expected poison, row {status}")
        if d.expect == "poison" and got:
            outcome.failures.append(f"{d.id}: expected poison, yet the provider accepted it {got} times")
        extra = max(0, got - 1)
        outcome.duplicates += extra
        if extra > per_delivery_events.get(d.id, 0):
            outcome.failures.append(
                f"{d.id}: {got} acceptances but only {per_delivery_events.get(d.id, 0)} fault events could explain them"
            )
    outcome.forced = sum(min(n, max(0, accepted.get(k, 0) - 1)) for k, n in per_delivery_events.items())
    outcome.restarts = run.worker_restarts
    return outcome


@contextlib.contextmanager
def timed(outcome: Outcome) -> Iterator[Outcome]:
    start = time.monotonic()
    try:
        yield outcome
    finally:
        outcome.seconds = time.monotonic() - start
