"""cProfile inside the threaded worker: where one process's CPU goes when it drains deliveries.

``python -m bench.profile_threads [--jobs 400] [--threads 16] [--latency-ms 100] >/dev/null``: enqueues the jobs,
runs ``ThreadPoolWorker.work(burst=True)`` in this process with one profiler for the dequeue loop (main
thread) and one per job thread (around ``perform_job``), and prints the top functions of each by
cumulative time, plus the drain rate, on stderr. The providers answer after ``--latency-ms``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import sys
import threading
import time
import uuid
from typing import Any

import redis
from rq import Queue

from alert_worker.settings import Settings
from alert_worker.threaded_worker import ThreadPoolWorker
from bench.providers import running_slow_smtp
from bench.services import locked_redis_db, throwaway_database

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


class ProfiledWorker(ThreadPoolWorker):
    """Each job thread profiles its own ``perform_job`` calls."""

    _local = threading.local()

    def perform_job(self, job: Any, queue: Any, execution: Any) -> bool:
        profile = getattr(self._local, "profile", None)
        if profile is None:
            profile = self._local.profile = cProfile.Profile()
            with _lock:
                _profiles.append(profile)
        profile.enable()
        try:
            return bool(super().perform_job(job, queue, execution))
        finally:
            profile.disable()


def top(stats: pstats.Stats, n: int) -> str:
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("cumulative").print_stats(n)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_threads")
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # the sink runs in this process; the bench's does not
    with (
        throwaway_database() as database_url,
        locked_redis_db() as redis_url,
        running_slow_smtp(args.latency_ms) as sink,
    ):
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(sink.port),
            "SMTP_SECURITY": "none",
            "ALERTS_FROM_EMAIL": "alerts@example.org",
            "ALERT_RECIPIENT_HASH_SECRET": "bench-secret",
            "ALERT_LOG_FORMAT": "json",
        }
        for name in ("EMAIL", "SLACK", "SMS"):
            env[f"ALERT_RATE_{name}_PER_MIN"] = "0"
            env[f"ALERT_RATE_{name}_PER_RECIPIENT_HOUR"] = "0"
        env["ALERT_RATE_GLOBAL_PER_MIN"] = "0"
        os.environ.update(env)
        client = redis.Redis.from_url(redis_url)
        queue = Queue(f"profile-{uuid.uuid4().hex[:6]}", connection=client)
        for i in range(args.jobs):
            queue.enqueue(
                "alert_worker.entrypoint.execute_delivery_job",
                f"{queue.name}-{i}",
                "email",
                "ops@example.org",
                f"{queue.name}-{i}",
                "disk almost full on db-1",
            )
        worker = ProfiledWorker([queue], connection=client, settings=Settings.from_env(env), threads=args.threads)
        main_profile = cProfile.Profile()
        started = time.monotonic()
        main_profile.enable()
        worker.work(burst=True)
        main_profile.disable()
        took = time.monotonic() - started
        report = sys.stderr
        print(
            f"drained {args.jobs} in {took:.1f} s: {args.jobs / took:.1f} jobs/s (with profiling overhead)", file=report
        )
        print("== dequeue loop (main thread) ==", file=report)
        print(top(pstats.Stats(main_profile), args.top), file=report)
        print("== job threads (perform_job), all threads merged ==", file=report)
        merged = pstats.Stats(_profiles[0])
        for profile in _profiles[1:]:
            merged.add(profile)
        print(top(merged, args.top), file=report)
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
