"""Drain throughput and enqueue→accepted latency of our job against RQ's ceiling and the reference design.

``python -m bench.run --quick`` (under 3 minutes) or ``python -m bench.run`` (the full run), from the
repository root. Cases, each run by a real ``rq worker`` subprocess on a private queue:

  (a) ceiling    RQ no-op job with our job's arguments
  (b) per-job    ``execute_delivery_job``, default ``ALERT_RESOURCE_SCOPE=job``
  (c) process    ``execute_delivery_job`` with ``ALERT_RESOURCE_SCOPE=process``
  (d) reference  ``bench.reference_async``: asyncio.run + AsyncConnectionPool + redis.asyncio per job
  (e) floor      RQ plus the SMTP send alone (no database, no Redis of ours): what any delivery costs

on ``simple`` (``rq.worker.SimpleWorker``) and ``fork`` (forking ``Worker`` whose parent preloaded the
job modules, as ``alert-worker run`` does); (b) also on ``plain``: exactly ``rq worker Q --with-scheduler``,
nothing preloaded, so every work-horse imports the package. Throughput: N jobs enqueued up front,
a ``--burst`` worker drains them; jobs/s from RQ's ``ended_at`` stamps (first to last, so worker start-up
is excluded); median of the rounds, which are interleaved. Latency: a long-running worker fed at half
the measured capacity; enqueue call → SMTP sink accepted (no-op: → RQ ``ended_at``). RSS: peak of the
worker and its work-horses (``wait4``). Rate limits are disabled; every delivery goes to a loopback sink.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
from rq import Queue
from rq.job import Job, JobStatus

from bench.services import TimingSink, locked_redis_db, running_sink, throwaway_database

REPO = Path(__file__).resolve().parent.parent
JOBS = {
    "a": ("ceiling (RQ no-op)", "bench.jobs.noop"),
    "b": ("per-job scope", "alert_worker.entrypoint.execute_delivery_job"),
    "c": ("process scope", "alert_worker.entrypoint.execute_delivery_job"),
    "d": ("reference async", "bench.reference_async.execute_delivery_job"),
    "e": ("floor: RQ + SMTP send only", "bench.jobs.send_only"),
}
WORKERS = {
    "simple": "rq.worker.SimpleWorker",
    "fork": "bench.workers.PreloadedWorker",
    "plain": "rq.worker.Worker",
}
ALL_CASES = (
    "a-simple",
    "e-simple",
    "b-simple",
    "c-simple",
    "d-simple",
    "a-fork",
    "e-fork",
    "b-fork",
    "c-fork",
    "d-fork",
    "b-plain",
)
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


@dataclass
class Bench:
    database_url: str
    redis_url: str
    sink: TimingSink
    scratch: Path
    connection: redis.Redis = field(init=False)

    def __post_init__(self) -> None:
        self.connection = redis.Redis.from_url(self.redis_url)

    # -- processes -----------------------------------------------------------------------------------
    def env(self, case: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ALERT_", "RQ_", "SMTP_", "TWILIO_"))}
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(self.sink.port),
            SMTP_SECURITY="none",
            ALERTS_FROM_EMAIL="alerts@example.org",
            ALERT_RECIPIENT_HASH_SECRET="bench-secret",
            ALERT_RESOURCE_SCOPE="process" if case.startswith("c") else "job",
            PYTHONPATH=str(REPO),
        )
        env.update(dict.fromkeys(RATE_VARIABLES, "0"))
        return env

    def start_worker(self, case: str, queue: str, *, burst: bool) -> subprocess.Popen[bytes]:
        rq = shutil.which("rq", path=str(Path(sys.executable).parent)) or "rq"
        command = [rq, "worker", "-u", self.redis_url, "-w", WORKERS[case.split("-")[1]], "--with-scheduler"]
        if burst:
            command.append("--burst")
        log = (self.scratch / f"{queue}.log").open("wb")
        return subprocess.Popen([*command, queue], cwd=REPO, env=self.env(case), stdout=subprocess.DEVNULL, stderr=log)

    @staticmethod
    def reap(process: subprocess.Popen[bytes], timeout: float) -> int:
        """Wait for the worker; returns its peak RSS (KB, the largest of it and its work-horses)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, _, usage = os.wait4(process.pid, os.WNOHANG)
            if pid == process.pid:
                process.returncode = 0
                return int(usage.ru_maxrss)
            time.sleep(0.02)
        process.kill()
        _, _, usage = os.wait4(process.pid, 0)
        process.returncode = -9
        raise TimeoutError(f"worker {process.args} did not finish in {timeout:.0f} s")

    # -- jobs ----------------------------------------------------------------------------------------
    def enqueue(self, queue: Queue, case: str, delivery_id: str) -> Job:
        return queue.enqueue(
            JOBS[case[0]][1],
            delivery_id,
            "email",
            "ops@example.org",
            delivery_id,  # the subject: the sink keys accepted messages by it
            "disk almost full on db-1",
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

    def throughput_run(self, case: str, n: int, tag: str) -> tuple[float, int, int]:
        queue_name = f"bench-{case}-{tag}-{uuid.uuid4().hex[:6]}"
        queue = Queue(queue_name, connection=self.connection)
        ids = [f"{queue_name}-{i}" for i in range(n)]
        for delivery_id in ids:
            self.enqueue(queue, case, delivery_id)
        rss = self.reap(self.start_worker(case, queue_name, burst=True), timeout=60 + n)
        done, _ = self.ended(ids)
        if len(done) < 2:
            raise RuntimeError(f"only {len(done)} of {n} jobs finished (worker stderr: {self.stderr_tail(queue_name)})")
        stamps = sorted(done.values())
        return (len(stamps) - 1) / (stamps[-1] - stamps[0]), rss, n - len(done)

    def latency_run(self, case: str, m: int, rate: float, tag: str) -> tuple[list[float], int, int]:
        queue_name = f"bench-{case}-{tag}-{uuid.uuid4().hex[:6]}"
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
            self.wait_for(lambda: self.settled(ids), timeout=30 + 4 * m / rate)
        finally:
            worker.send_signal(signal.SIGTERM)
            rss = self.reap(worker, timeout=60)
        accepted = self.ended(ids)[0] if case.startswith("a") else self.sink.times(f"{queue_name}-")
        samples = [(accepted[i] - enqueued[i]) * 1000 for i in ids if i in accepted]
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


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ratio(results: dict[str, CaseResult], top: str, bottom: str) -> str:
    if top not in results or bottom not in results:
        return "n/a"
    return f"{results[top].jobs_per_second / results[bottom].jobs_per_second:.2f}"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def table(results: dict[str, CaseResult]) -> Iterator[str]:
    yield "| case | worker | jobs/s (median) | runs | p50 ms | p95 ms | p99 ms | peak RSS MB | failed |"
    yield "|---|---|---:|---|---:|---:|---:|---:|---:|"
    for case, r in results.items():
        letter, worker = case.split("-")
        runs = " ".join(f"{t:.0f}" for t in r.throughputs)
        lat = r.latencies_ms
        yield (
            f"| ({letter}) {JOBS[letter][0]} | {worker} | {r.jobs_per_second:.1f} | {runs} | "
            f"{percentile(lat, 50):.1f} | {percentile(lat, 95):.1f} | {percentile(lat, 99):.1f} | "
            f"{max(r.rss_kb, default=0) / 1024:.0f} | {r.failures} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small runs: under 3 minutes")
    parser.add_argument("--jobs", type=int, help="jobs per throughput run (default 150, quick 30)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds (default 3)")
    parser.add_argument("--latency-jobs", type=int, help="jobs per latency run (default 150, quick 30)")
    parser.add_argument("--latency-rounds", type=int, help="latency rounds (default 2, quick 1)")
    parser.add_argument("--cases", default=",".join(ALL_CASES), help="comma-separated subset of " + " ".join(ALL_CASES))
    args = parser.parse_args(argv)
    n = args.jobs or (30 if args.quick else 150)
    m = args.latency_jobs or (30 if args.quick else 150)
    latency_rounds = args.latency_rounds or (1 if args.quick else 2)
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(ALL_CASES)
    if unknown:
        parser.error(f"unknown cases: {sorted(unknown)}")
    results = {case: CaseResult() for case in cases}
    started, load_before = time.monotonic(), load()
    with (
        throwaway_database() as database_url,
        locked_redis_db() as redis_url,
        running_sink() as sink,
        tempfile.TemporaryDirectory(prefix="alert-bench-") as scratch,
    ):
        bench = Bench(database_url=database_url, redis_url=redis_url, sink=sink, scratch=Path(scratch))
        for round_ in range(args.rounds):
            for case in cases:
                try:
                    jobs_per_second, rss, failed = bench.throughput_run(case, n, f"t{round_}")
                except (RuntimeError, TimeoutError) as exc:  # reported in the table; the other cases go on
                    print(f"  round {round_ + 1} {case}: {exc}", file=sys.stderr, flush=True)
                    results[case].failures += n
                    continue
                results[case].throughputs.append(jobs_per_second)
                results[case].rss_kb.append(rss)
                results[case].failures += failed
                print(f"  round {round_ + 1} {case:9s} {jobs_per_second:7.1f} jobs/s", file=sys.stderr, flush=True)
        for round_ in range(latency_rounds):
            for case in cases:
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
    print(f"jobs per throughput run {n}, rounds {args.rounds}; latency jobs {m} x {latency_rounds} at half capacity")
    print(f"load average before {load_before}, after {load()}; {os.cpu_count()} CPUs; ")
    print(f"took {time.monotonic() - started:.0f} s")
    for line in table(results):
        print(line)
    p99 = percentile(results["b-fork"].latencies_ms, 99) if "b-fork" in results else float("nan")
    print(
        f"bench: per_job_vs_reference={ratio(results, 'b-simple', 'd-simple')} "
        f"process_vs_ceiling={ratio(results, 'c-simple', 'a-simple')} "
        f"plain_vs_preloaded={ratio(results, 'b-plain', 'b-fork')} p99_ms={p99:.1f}"
    )
    return 1 if any(r.failures for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
