"""Drain throughput and enqueue→accepted latency of our job against RQ's ceiling and the reference design.

``python -m bench.run --quick`` (a few minutes) or ``python -m bench.run`` (the full run), from the
repository root. Jobs, each drained by a real worker subprocess on a private queue:

  (a) ceiling    RQ no-op job with our job's arguments
  (b) per-job    ``execute_delivery_job`` (e-mail)        (s) the same, Slack (webhook)
  (c) process    ``execute_delivery_job`` with ``ALERT_RESOURCE_SCOPE=process``
  (d) reference  ``bench.reference_async``: asyncio.run + AsyncConnectionPool + redis.asyncio per job
  (e) floor      RQ plus the SMTP send alone (no database, no Redis of ours): what any delivery costs
  (p) peer       the minimal delivery a user would write for Dramatiq or Celery (``bench.peers``): claim the
                 row with one upsert, POST to the webhook on a per-thread ``requests.Session``, mark it
                 delivered; a stock ``psycopg_pool.ConnectionPool(max_size=16)``, Redis broker

on workers ``simple`` (``rq.worker.SimpleWorker``), ``fork`` (``alert-worker run --worker-class
bench.workers.PreloadedWorker``: RQ's forking ``Worker`` under our ``run``, whose parent preloaded the job
modules, configured logging and opened its Redis client without driver info), ``plain`` (exactly
``rq worker Q --with-scheduler``: every work-horse imports the package) and ``threads`` (``alert-worker
run --burst --threads N``, the thread-pooled worker), ``threads2`` (two such processes on one queue: P = 2
processes x N threads on one host), and the peers' ``dramatiq`` (``dramatiq --processes 1 --threads N``)
and ``celery`` (``celery worker -P threads -c N``), run from their own venv (``bench/.peers-venv``, or
``BENCH_PEERS_PYTHON``; the peer cases are skipped, with a message, when it is missing). A case ``X-W@L``
runs against providers that answer after L ms (``bench.providers``; no suffix: L = 0). Throughput: jobs
enqueued up front, a burst worker drains them (a peer's worker is stopped once every row is delivered);
jobs/s from RQ's ``ended_at`` stamps, or for Slack and the peers from the webhook's answer stamps (the
same source for ours and the peers), first to last, so start-up is excluded; median of interleaved
rounds. The Slack and peer cases queue 400 jobs at L = 100 and 1,500 at L = 0 (in at most 2 rounds).
Latency (``a-fork``, ``b-fork``): a long-running worker fed at half the measured capacity; enqueue call →
provider answered (no-op: → RQ ``ended_at``). RSS: peak (``VmHWM``) of the worker and its work-horses.
Rate limits are disabled.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis
from rq import Queue
from rq.job import Job, JobStatus

from alert_worker.redaction import sanitize_text, scrub_echoes
from bench.peers import TABLE as PEER_TABLE
from bench.providers import Answers, SlowWebhook, running_slow_smtp, running_slow_webhook
from bench.services import locked_redis_db, throwaway_database

REPO = Path(__file__).resolve().parent.parent
JOBS = {
    "a": ("ceiling (RQ no-op)", "bench.jobs.noop"),
    "b": ("per-job scope", "alert_worker.entrypoint.execute_delivery_job"),
    "c": ("process scope", "alert_worker.entrypoint.execute_delivery_job"),
    "d": ("reference async", "bench.reference_async.execute_delivery_job"),
    "e": ("floor: RQ + SMTP send only", "bench.jobs.send_only"),
    "s": ("per-job scope, Slack", "alert_worker.entrypoint.execute_delivery_job"),
    "p": ("peer minimal delivery, Slack", "bench.peers.deliver"),
}
WORKERS = {
    "simple": "rq.worker.SimpleWorker",
    "fork": "bench.workers.PreloadedWorker",
    "plain": "rq.worker.Worker",
    "threads": "",  # alert-worker run --threads N
    "threads2": "",  # two of them on one queue
    "dramatiq": "bench.peers.dramatiq_app",  # dramatiq MODULE --processes 1 --threads N
    "celery": "bench.peers.celery_app",  # celery -A MODULE worker -P threads -c N
}
PEERS = ("dramatiq", "celery")
ALL_CASES = (
    "a-simple",
    "e-simple",
    "b-simple",
    "d-simple",
    "a-fork",
    "e-fork",
    "b-fork",
    "d-fork",
    "b-plain",
    "e-threads",
    "b-threads",
    "b-threads@100",
    "s-threads@100",
    "p-dramatiq@100",
    "p-celery@100",
    "d-simple@100",
    "s-threads",
    "p-dramatiq",
    "p-celery",
    "s-threads2",
)
LATENCY_CASES = ("a-fork", "b-fork")
RECIPIENT, BODY = "ops@example.org", "disk almost full on db-1"  # every bench job's (the subject: its id)
EXCEPTION_NAME = re.compile(r"[A-Za-z_][\w.]*")  # an exception's qualified name: code, kept as it is
SHOWN_FAILURES = 5  # jobs explained per run when some did not finish
PROVIDER_LATENCY_MS = 100  # the @100 cases: a real provider answers in 100-300 ms
THREADS = 16
HOST_PROCESSES = 2  # threads2: P processes of N threads
PEER_JOBS = {0: 1500, PROVIDER_LATENCY_MS: 400}  # Slack and peer cases, by latency (ms)
PEER_ROUNDS_AT_ZERO = 2  # their L = 0 runs are long: at most this many rounds
PEERS_VENV = REPO / "bench" / ".peers-venv"
PEERS_REQUIREMENTS = REPO / "bench" / "requirements-peers.txt"
RATE_VARIABLES = (
    "ALERT_RATE_EMAIL_PER_MIN",
    "ALERT_RATE_SLACK_PER_MIN",
    "ALERT_RATE_SMS_PER_MIN",
    "ALERT_RATE_EMAIL_PER_RECIPIENT_HOUR",
    "ALERT_RATE_SLACK_PER_RECIPIENT_HOUR",
    "ALERT_RATE_SMS_PER_RECIPIENT_HOUR",
    "ALERT_RATE_GLOBAL_PER_MIN",
)


@dataclass
class CaseResult:
    throughputs: list[float] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0

    @property
    def jobs_per_second(self) -> float:
        return statistics.median(self.throughputs) if self.throughputs else float("nan")


def latency_of(case: str) -> int:
    return int(case.split("@")[1]) if "@" in case else 0


def worker_of(case: str) -> str:
    return case.split("-")[1].split("@")[0]


@dataclass
class Bench:
    database_url: str
    redis_url: str
    smtp: dict[int, Answers]  # by latency (ms): SlowSmtpSink
    hooks: dict[int, SlowWebhook]
    scratch: Path
    peers_python: str | None = None  # the peers' venv interpreter; None: the peer cases are skipped
    connection: redis.Redis = field(init=False)

    def __post_init__(self) -> None:
        self.connection = redis.Redis.from_url(self.redis_url)

    def answers(self, case: str) -> Answers:
        return (self.hooks if case[0] in "sp" else self.smtp)[latency_of(case)]

    # -- processes -----------------------------------------------------------------------------------
    def env(self, case: str, queue: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ALERT_", "RQ_", "SMTP_", "TWILIO_"))}
        latency = latency_of(case)
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(getattr(self.smtp[latency], "port", 0)),
            SMTP_SECURITY="none",
            ALERTS_FROM_EMAIL="alerts@example.org",
            SLACK_WEBHOOK_HOSTS="127.0.0.1",
            SLACK_WEBHOOK_URL=self.hooks[latency].url,
            ALERT_RECIPIENT_HASH_SECRET="bench-secret",
            ALERT_RESOURCE_SCOPE="process" if case.startswith("c") else "job",
            ALERT_AUTO_MIGRATE="0",
            ALERT_WORKER_THREADS=str(THREADS),
            RQ_QUEUES=queue,
            PYTHONPATH=str(REPO),
        )
        env.update(dict.fromkeys(RATE_VARIABLES, "0"))
        return env

    def start_worker(self, case: str, queue: str, *, burst: bool) -> subprocess.Popen[bytes]:
        if worker_of(case) in ("threads", "threads2"):
            command = [sys.executable, "-m", "alert_worker", "run", "--threads", str(THREADS)]
        elif worker_of(case) == "fork":  # the product's forking path: its parent's logging and Redis client
            command = [sys.executable, "-m", "alert_worker", "run", "--worker-class", WORKERS["fork"]]
        else:
            rq = shutil.which("rq", path=str(Path(sys.executable).parent)) or "rq"
            command = [rq, "worker", "-u", self.redis_url, "-w", WORKERS[worker_of(case)], "--with-scheduler", queue]
        if burst:
            command.append("--burst")
        log = (self.scratch / f"{queue}.log").open("ab")
        env = self.env(case, queue)
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)

    def start_workers(self, case: str, queue: str, *, burst: bool) -> list[subprocess.Popen[bytes]]:
        """The case's worker processes: ``threads2`` runs HOST_PROCESSES of them on the queue, the rest one."""
        return [self.start_worker(case, queue, burst=burst) for _ in range(workers_in(case))]

    @staticmethod
    def reap(*processes: subprocess.Popen[bytes], timeout: float) -> int:
        """Wait for the workers; returns their peak RSS (KB): the largest ``VmHWM`` of them (read every
        20 ms while they run) and of their descendants (found every 0.5 s: a short-lived work-horse may be
        missed; it is a copy of its parent).

        Not ``wait4``'s ``ru_maxrss``: a spawned child's starts at the bench's own RSS (Linux carries the
        pre-exec peak over), so it would report the bench, not a worker smaller than it."""
        deadline, peak, running, family = time.monotonic() + timeout, 0, list(processes), set[int]()
        for tick in itertools.count():
            if not running or time.monotonic() >= deadline:
                break
            if tick % 25 == 0:
                family = descendants(process.pid for process in running)
            peak = max([peak, *(peak_rss_kb(pid) for pid in [*(process.pid for process in running), *family])])
            for process in list(running):
                if os.waitpid(process.pid, os.WNOHANG)[0] == process.pid:
                    process.returncode = 0
                    running.remove(process)
            if running:
                time.sleep(0.02)
        for process in running:
            process.kill()
            os.waitpid(process.pid, 0)
            process.returncode = -9
        if running:
            raise TimeoutError(f"worker {running[0].args} did not finish in {timeout:.0f} s")
        return peak

    # -- jobs ----------------------------------------------------------------------------------------
    def enqueue(self, queue: Queue, case: str, delivery_id: str) -> Job:
        slack = case.startswith("s")
        return queue.enqueue(
            JOBS[case[0]][1],
            delivery_id,
            "slack" if slack else "email",
            "" if slack else RECIPIENT,
            delivery_id,  # the subject: the sink keys accepted messages by it
            BODY,
            job_id=delivery_id,
            result_ttl=600,
        )

    def ended(self, ids: Sequence[str]) -> tuple[dict[str, float], int]:
        """RQ's end stamp of each finished job, and how many failed."""
        done: dict[str, float] = {}
        failed = 0
        for job in Job.fetch_many(list(ids), connection=self.connection):
            if job is None:
                continue
            status = job.get_status(refresh=False)
            if status == JobStatus.FINISHED and job.ended_at is not None:
                done[job.id] = job.ended_at.timestamp()
            elif status == JobStatus.FAILED:
                failed += 1
        return done, failed

    def why_not_finished(self, ids: Sequence[str]) -> list[str]:
        """For each job that did not finish: its RQ status, why it failed and its row (``error_message``).

        The reason is the exception's last line and the row's error, sanitized: no recipient, no body.
        """
        jobs = {job.id: job for job in Job.fetch_many(list(ids), connection=self.connection) if job is not None}
        pending = [i for i in ids if i not in jobs or jobs[i].get_status(refresh=False) != JobStatus.FINISHED]
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            rows = {
                str(row[0]): (str(row[1]), int(row[2]), row[3])
                for row in conn.execute(
                    "SELECT id, status, attempts, error_message FROM alert_deliveries WHERE id = ANY(%s)",
                    [pending],
                )
            }
        lines = []
        for delivery_id in pending:
            job = jobs.get(delivery_id)
            if job is None:
                lines.append(failure_line(delivery_id, "missing", None, rows.get(delivery_id)))
                continue
            result = job.latest_result()
            status = job.get_status(refresh=False)
            exc_string = result.exc_string if result is not None else None
            lines.append(failure_line(delivery_id, status.value if status else "?", exc_string, rows.get(delivery_id)))
        return lines

    def explain(self, label: str, ids: Sequence[str]) -> None:
        """Print, for a run where jobs did not finish, why (the first few)."""
        lines = self.why_not_finished(ids)
        for line in lines[:SHOWN_FAILURES]:
            print(f"  {label} not finished: {line}", file=sys.stderr, flush=True)
        if len(lines) > SHOWN_FAILURES:
            print(f"  {label}: {len(lines) - SHOWN_FAILURES} more not finished", file=sys.stderr, flush=True)

    def throughput_run(self, case: str, n: int, tag: str) -> tuple[float, int, int]:
        queue_name = f"bench-{case.replace('@', 'at')}-{tag}-{uuid.uuid4().hex[:6]}"
        queue = Queue(queue_name, connection=self.connection)
        ids = [f"{queue_name}-{i}" for i in range(n)]
        for delivery_id in ids:
            self.enqueue(queue, case, delivery_id)
        try:
            rss = self.reap(*self.start_workers(case, queue_name, burst=True), timeout=60 + n)
        except TimeoutError:
            self.explain(f"{case} ({queue_name})", ids)
            raise
        done, _ = self.ended(ids)
        if len(done) < n:
            self.explain(f"{case} ({queue_name})", ids)
        if case.startswith("s"):  # the webhook's answer stamps: the source the peers are measured by
            answered = self.answers(case).times(f"{queue_name}-")
            done = {i: answered[i] for i in done if i in answered}
        if len(done) < 2:
            raise RuntimeError(f"only {len(done)} of {n} jobs finished (worker stderr: {self.stderr_tail(queue_name)})")
        return rate(done.values()), rss, n - len(done)

    # -- peers ---------------------------------------------------------------------------------------
    def peer_env(self, case: str, queue: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ALERT_", "RQ_", "PEER_"))}
        env.update(
            PEER_DATABASE_URL=self.database_url,
            PEER_REDIS_URL=self.redis_url,
            PEER_QUEUE=queue,
            PEER_WEBHOOK_URL=self.hooks[latency_of(case)].url,
            PYTHONPATH=str(REPO),
        )
        return env

    def peer_command(self, case: str, queue: str) -> list[str]:
        assert self.peers_python is not None
        module, threads = WORKERS[worker_of(case)], str(THREADS)
        if worker_of(case) == "dramatiq":
            command = ["-m", "dramatiq", module, "--processes", "1", "--threads", threads, "--queues", queue]
        else:
            command = ["-m", "celery", "-A", module, "worker", "-P", "threads", "-c", threads, "-Q", queue]
        return [self.peers_python, *command]

    def peer_run(self, case: str, n: int, tag: str) -> tuple[float, int, int]:
        """Queue n jobs for the peer, start its worker, stop it once every row is delivered (it has no burst
        mode); the rate from the webhook's answer stamps, as for our Slack cases."""
        queue_name = f"bench-{case.replace('@', 'at')}-{tag}-{uuid.uuid4().hex[:6]}"
        prefix, env = f"{queue_name}-", self.peer_env(case, queue_name)
        log = self.scratch / f"{queue_name}.log"
        assert self.peers_python is not None
        enqueue = [self.peers_python, "-m", "bench.peers", "enqueue", worker_of(case), prefix, str(n), BODY]
        with log.open("ab") as out:
            queued = subprocess.run(enqueue, cwd=REPO, env=env, stdout=out, stderr=out, timeout=60 + n / 10)
        if queued.returncode != 0:
            raise RuntimeError(f"enqueueing failed (stderr: {self.stderr_tail(queue_name)})")
        with log.open("ab") as out:
            worker = subprocess.Popen(
                self.peer_command(case, queue_name), cwd=REPO, env=env, stdout=out, stderr=out, start_new_session=True
            )
        answers = self.answers(case)
        try:
            self.wait_for(lambda: len(answers.times(prefix)) >= n and self.peer_delivered(prefix) >= n, 60 + n)
        except TimeoutError:
            print(f"  {case} ({queue_name}): {len(answers.times(prefix))} of {n} answered", file=sys.stderr)
        finally:
            with contextlib.suppress(ProcessLookupError):  # warm shutdown: the worker and its processes
                os.killpg(worker.pid, signal.SIGTERM)
            try:
                rss = self.reap(worker, timeout=30)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.pid, signal.SIGKILL)  # whatever it left behind
        stamps = answers.times(prefix)
        if len(stamps) < 2:
            raise RuntimeError(f"only {len(stamps)} of {n} jobs delivered (worker log: {self.stderr_tail(queue_name)})")
        return rate(stamps.values()), rss, n - min(n, self.peer_delivered(prefix))

    def peer_delivered(self, prefix: str) -> int:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM peer_deliveries WHERE starts_with(id, %s) AND status = 'delivered'", [prefix]
            ).fetchone()
        return int(row[0]) if row else 0

    def latency_run(self, case: str, m: int, rate: float, tag: str) -> tuple[list[float], int, int]:
        queue_name = f"bench-{case.replace('@', 'at')}-{tag}-{uuid.uuid4().hex[:6]}"
        queue = Queue(queue_name, connection=self.connection)
        worker = self.start_worker(case, queue_name, burst=False)
        try:
            warm = self.enqueue(queue, case, f"{queue_name}-warm")
            self.wait_for(lambda: bool(self.ended([warm.id])[0]), timeout=60)
            enqueued: dict[str, float] = {}
            start = time.monotonic()
            for i in range(m):
                pause = start + i / rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                delivery_id = f"{queue_name}-{i}"
                enqueued[delivery_id] = time.time()
                self.enqueue(queue, case, delivery_id)
            ids = list(enqueued)
            try:
                self.wait_for(lambda: self.settled(ids), timeout=30 + 4 * m / rate)
            except TimeoutError:
                self.explain(f"latency {case} ({queue_name})", ids)
                raise
        finally:
            worker.send_signal(signal.SIGTERM)
            rss = self.reap(worker, timeout=60)
        accepted = self.ended(ids)[0] if case.startswith("a") else self.answers(case).times(f"{queue_name}-")
        samples = [(accepted[i] - enqueued[i]) * 1000 for i in ids if i in accepted]
        if len(samples) < m:
            self.explain(f"latency {case} ({queue_name})", ids)
        return samples, rss, m - len(samples)

    def stderr_tail(self, queue_name: str) -> str:
        return (self.scratch / f"{queue_name}.log").read_text(errors="replace")[-500:]

    def settled(self, ids: Sequence[str]) -> bool:
        done, failed = self.ended(ids)
        return len(done) + failed == len(ids)

    @staticmethod
    def wait_for(ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.05)
        raise TimeoutError("jobs did not finish in time")


def peak_rss_kb(pid: int) -> int:
    """A process's peak RSS (``VmHWM``, KB); 0 for one that has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)


def descendants(pids: Iterable[int]) -> set[int]:
    """Every process below these (their work-horses, a Dramatiq worker process), from ``/proc/*/stat``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def rate(stamps: Iterable[float]) -> float:
    """Jobs per second between the first and the last stamp (start-up excluded)."""
    ordered = sorted(stamps)
    return (len(ordered) - 1) / (ordered[-1] - ordered[0])


def workers_in(case: str) -> int:
    return HOST_PROCESSES if worker_of(case) == "threads2" else 1


def size_of(case: str, n: int, peer_jobs: int | None) -> int:
    """Jobs per throughput run: the Slack and peer cases as the peers were measured, threaded at least 10 N."""
    if case[0] in "sp":
        return peer_jobs or PEER_JOBS.get(latency_of(case), n)
    return max(n, 10 * THREADS) if worker_of(case).startswith("threads") else n


def rounds_of(case: str, rounds: int) -> int:
    return min(rounds, PEER_ROUNDS_AT_ZERO) if case[0] in "sp" and latency_of(case) == 0 else rounds


def find_peers_python() -> tuple[str | None, str]:
    """The peers' interpreter (``BENCH_PEERS_PYTHON`` or ``bench/.peers-venv``) if it imports both peers;
    else ``None`` and why."""
    python = os.environ.get("BENCH_PEERS_PYTHON") or str(PEERS_VENV / "bin" / "python")
    how = (
        f"python3 -m venv {PEERS_VENV.relative_to(REPO)} && "
        f"{PEERS_VENV.relative_to(REPO)}/bin/pip install -r {PEERS_REQUIREMENTS.relative_to(REPO)}"
    )
    if not Path(python).is_file():
        return None, f"no peers venv ({python} missing); to run them: {how}"
    try:
        probe = subprocess.run(
            [python, "-c", "import celery, dramatiq, psycopg_pool, requests"], capture_output=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{python} does not run ({exc}); {how}"
    if probe.returncode != 0:
        return None, f"{python} cannot import the peers ({probe.stderr.decode(errors='replace').strip()[-200:]}); {how}"
    return python, ""


def failure_line(delivery_id: str, status: str, exc_string: str | None, row: tuple[str, int, str | None] | None) -> str:
    """``id: job <status> (<exception, last line>); row <status>, attempts n (<error_message>)``, sanitized."""
    reason = next((line for line in reversed((exc_string or "").splitlines()) if line.strip()), "")
    text = f"job {status}"
    if reason:
        kind, colon, message = reason.partition(": ")
        if not EXCEPTION_NAME.fullmatch(kind):  # not "module.Type: message": all of it is message
            kind, colon, message = "", "", reason
        text += f" ({kind.rsplit('.', 1)[-1]}{colon}{_clean(message)})"
    if row is None:
        return f"{delivery_id}: {text}; no row"
    row_status, attempts, error = row
    text += f"; row {row_status}, attempts {attempts}"
    return f"{delivery_id}: {text}" + (f" ({_clean(error)})" if error else "")


def _clean(text: str) -> str:
    """Provider and exception text without the recipient or the body (the subject is the job's id)."""
    return sanitize_text(scrub_echoes(text, BODY).replace(RECIPIENT, "<recipient>"))


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ratio(results: dict[str, CaseResult], top: str, bottom: str) -> str:
    if top not in results or bottom not in results or not results[top].throughputs or not results[bottom].throughputs:
        return "n/a"
    return f"{results[top].jobs_per_second / results[bottom].jobs_per_second:.2f}"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def table(results: dict[str, CaseResult]) -> Iterator[str]:
    yield "| case | worker | jobs/s (median) | runs | p50 ms | p95 ms | p99 ms | peak RSS MB | failed |"
    yield "|---|---|---:|---|---:|---:|---:|---:|---:|"
    for case, r in results.items():
        letter, worker = case[0], case.split("-", 1)[1]
        runs = " ".join(f"{t:.0f}" for t in r.throughputs)
        lat = r.latencies_ms
        yield (
            f"| ({letter}) {JOBS[letter][0]} | {worker} | {r.jobs_per_second:.1f} | {runs} | "
            f"{percentile(lat, 50):.1f} | {percentile(lat, 95):.1f} | {percentile(lat, 99):.1f} | "
            f"{max(r.rss_kb, default=0) / 1024:.0f} | {r.failures} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small runs: about 4 minutes with the peers")
    parser.add_argument("--jobs", type=int, help="jobs per throughput run (default 150, quick 30)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds (default 3)")
    parser.add_argument("--latency-jobs", type=int, help="jobs per latency run (default 150, quick 30)")
    parser.add_argument("--latency-rounds", type=int, help="latency rounds (default 2, quick 1)")
    parser.add_argument(
        "--peer-jobs", type=int, help="jobs per Slack and peer throughput run (default 400 at L = 100, 1,500 at L = 0)"
    )
    parser.add_argument("--cases", default=",".join(ALL_CASES), help="comma-separated subset of " + " ".join(ALL_CASES))
    args = parser.parse_args(argv)
    n = args.jobs or (30 if args.quick else 150)
    m = args.latency_jobs or (30 if args.quick else 150)
    latency_rounds = args.latency_rounds or (1 if args.quick else 2)
    cases = [c for c in args.cases.split(",") if c]
    unknown = {c for c in cases if c.split("@")[0] not in {a.split("@")[0] for a in ALL_CASES}}
    if unknown:
        parser.error(f"unknown cases: {sorted(unknown)}")
    peers_python, why_not = find_peers_python() if any(worker_of(c) in PEERS for c in cases) else (None, "")
    if why_not:
        skipped = [c for c in cases if worker_of(c) in PEERS]
        print(f"peers skipped ({', '.join(skipped)}): {why_not}", flush=True)
        print(f"  peers skipped: {why_not}", file=sys.stderr, flush=True)
        cases = [c for c in cases if c not in skipped]
    results = {case: CaseResult() for case in cases}
    started, load_before = time.monotonic(), load()
    latencies = sorted({0} | {latency_of(c) for c in cases})
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(throwaway_database())
        redis_url = stack.enter_context(locked_redis_db())
        smtp: dict[int, Answers] = {ms: stack.enter_context(running_slow_smtp(ms)) for ms in latencies}
        hooks = {ms: stack.enter_context(running_slow_webhook(ms)) for ms in latencies}
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="alert-bench-"))
        bench = Bench(
            database_url=database_url,
            redis_url=redis_url,
            smtp=smtp,
            hooks=hooks,
            scratch=Path(scratch),
            peers_python=peers_python,
        )
        if peers_python:
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(PEER_TABLE)
        for round_ in range(args.rounds):
            for case in [c for c in cases if round_ < rounds_of(c, args.rounds)]:
                size = size_of(case, n, args.peer_jobs)
                run = bench.peer_run if worker_of(case) in PEERS else bench.throughput_run
                try:
                    jobs_per_second, rss, failed = run(case, size, f"t{round_}")
                except (RuntimeError, TimeoutError) as exc:  # reported in the table; the other cases go on
                    print(f"  round {round_ + 1} {case}: {exc}", file=sys.stderr, flush=True)
                    results[case].failures += size
                    continue
                results[case].throughputs.append(jobs_per_second)
                results[case].rss_kb.append(rss)
                results[case].failures += failed
                print(f"  round {round_ + 1} {case:14s} {jobs_per_second:7.1f} jobs/s", file=sys.stderr, flush=True)
        for round_ in range(latency_rounds):
            for case in [c for c in cases if c in LATENCY_CASES]:
                rate = results[case].jobs_per_second / 2
                if not rate > 0:
                    continue
                try:
                    samples, rss, failed = bench.latency_run(case, m, rate, f"l{round_}")
                except TimeoutError as exc:
                    print(f"  latency {case}: {exc}", file=sys.stderr, flush=True)
                    results[case].failures += m
                    continue
                results[case].latencies_ms += samples
                results[case].rss_kb.append(rss)
                results[case].failures += failed
                print(f"  latency {case:9s} at {rate:5.1f}/s p99 {percentile(samples, 99):6.1f} ms", file=sys.stderr)
        bench.connection.close()
    print(
        f"jobs per throughput run {n} (threaded: at least {10 * THREADS}; Slack and peers: "
        f"{args.peer_jobs or PEER_JOBS[PROVIDER_LATENCY_MS]} at L = {PROVIDER_LATENCY_MS}, "
        f"{args.peer_jobs or PEER_JOBS[0]} at L = 0 in at most {PEER_ROUNDS_AT_ZERO} rounds), rounds {args.rounds}; "
        f"latency jobs {m} x {latency_rounds} at half capacity; N={THREADS}; threads2: {HOST_PROCESSES} processes"
    )
    print(f"load average before {load_before}, after {load()}; {os.cpu_count()} CPUs; ")
    print(f"took {time.monotonic() - started:.0f} s")
    for line in table(results):
        print(line)
    print(summary_line(results, PROVIDER_LATENCY_MS))
    return 1 if any(r.failures for r in results.values()) else 0


def summary_line(results: dict[str, CaseResult], latency_ms: int) -> str:
    at = f"@{latency_ms}"
    threaded = results.get(f"b-threads{at}")
    rss = max(threaded.rss_kb, default=0) / 1024 if threaded else float("nan")
    return (
        f"bench: threads_vs_best_peer_at_latency={best_peer_ratio(results, at)} "
        f"threads_vs_best_peer={best_peer_ratio(results, '')} "
        f"threads_jps_at_latency={threaded.jobs_per_second if threaded else float('nan'):.1f} "
        f"rss_mb={rss:.0f} "
        f"overhead_vs_floor={ratio(results, 'b-threads', 'e-threads')} "
        f"host_scaling={ratio(results, 's-threads2', 's-threads')} "
        f"p99_fork_vs_noop={p99_ratio(results, 'b-fork', 'a-fork')} "
        f"plain_vs_preloaded={ratio(results, 'b-plain', 'b-fork')} "
        f"fork_vs_reference={ratio(results, 'b-fork', 'd-fork')}"
    )


def best_peer_ratio(results: dict[str, CaseResult], at: str) -> str:
    """Our Slack case over the faster peer's, at one latency (``@100`` or ``""``)."""
    peers = [results[f"p-{peer}{at}"] for peer in PEERS if results.get(f"p-{peer}{at}", CaseResult()).throughputs]
    ours = results.get(f"s-threads{at}")
    if not peers or ours is None or not ours.throughputs:
        return "n/a"
    return f"{ours.jobs_per_second / max(peer.jobs_per_second for peer in peers):.2f}"


def p99_ratio(results: dict[str, CaseResult], top: str, bottom: str) -> str:
    if top not in results or bottom not in results or not results[bottom].latencies_ms:
        return "n/a"
    return f"{percentile(results[top].latencies_ms, 99) / percentile(results[bottom].latencies_ms, 99):.2f}"


if __name__ == "__main__":
    sys.exit(main())
