"""cProfile inside forked RQ work-horses (preloaded parent): where one job's time goes on the forking path.

``python -m bench.profile_fork [--jobs 150] [--job b|d|a] >/dev/null``: enqueues the jobs (``b`` our delivery,
``d`` the reference design, ``a`` RQ's no-op), drains them with ``bench.workers.PreloadedWorker`` in burst
mode, and profiles ``perform_job`` inside every horse (a horse leaves by ``os._exit``, so each dumps its
own stats file before returning). Prints the wall time per job (parent, fork to reaped), the time inside
``perform_job``, and the top functions of all horses merged, on stderr.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rq import Queue

from bench.providers import running_slow_smtp
from bench.services import locked_redis_db, throwaway_database

JOB_FUNCS = {
    "a": "bench.jobs.noop",
    "b": "alert_worker.entrypoint.execute_delivery_job",
    "d": "bench.reference_async.execute_delivery_job",
}
_OUT = Path(os.environ.get("BENCH_PROFILE_DIR", tempfile.gettempdir()))


def _worker_class() -> Any:
    from bench.workers import PreloadedWorker  # preloads at import: after the environment is set

    class ProfiledHorseWorker(PreloadedWorker):  # type: ignore[misc, valid-type]
        def perform_job(self, job: Any, queue: Any, execution: Any) -> bool:
            profile = cProfile.Profile()
            started = time.perf_counter()
            profile.enable()
            try:
                return bool(super().perform_job(job, queue, execution))
            finally:
                profile.disable()
                took = time.perf_counter() - started
                profile.dump_stats(str(_OUT / f"horse-{os.getpid()}-{took * 1000:.3f}.prof"))

    return ProfiledHorseWorker


def top(stats: pstats.Stats, n: int) -> str:
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("cumulative").print_stats(n)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_fork")
    parser.add_argument("--jobs", type=int, default=150)
    parser.add_argument("--job", choices=sorted(JOB_FUNCS), default="b")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--only", default="", help="also list the functions whose path matches this regex")
    args = parser.parse_args()
    global _OUT
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    with (
        throwaway_database() as database_url,
        locked_redis_db() as redis_url,
        running_slow_smtp(0) as sink,
        tempfile.TemporaryDirectory(prefix="alert-prof-") as scratch,
    ):
        _OUT = Path(scratch)
        os.environ.update(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(sink.port),
            SMTP_SECURITY="none",
            ALERTS_FROM_EMAIL="alerts@example.org",
            ALERT_RECIPIENT_HASH_SECRET="bench-secret",
            ALERT_AUTO_MIGRATE="0",
            **{f"ALERT_RATE_{c}_PER_MIN": "0" for c in ("EMAIL", "SLACK", "SMS")},
            **{f"ALERT_RATE_{c}_PER_RECIPIENT_HOUR": "0" for c in ("EMAIL", "SLACK", "SMS")},
            ALERT_RATE_GLOBAL_PER_MIN="0",
        )
        from alert_worker.logs import configure_logging
        from alert_worker.resources import open_redis
        from alert_worker.settings import Settings

        settings = Settings.from_env()
        configure_logging(settings.log_format)  # as `alert-worker run` does before forking (stdout)
        client = open_redis(settings)  # as `alert-worker run` does: no driver-info lookup in every horse
        queue = Queue(f"profile-{uuid.uuid4().hex[:6]}", connection=client)
        for i in range(args.jobs):
            queue.enqueue(
                JOB_FUNCS[args.job], f"{queue.name}-{i}", "email", "ops@example.org", f"{queue.name}-{i}", "disk full"
            )
        worker = _worker_class()([queue], connection=client)
        started = time.monotonic()
        worker.work(burst=True)
        took = time.monotonic() - started
        files = sorted(Path(scratch).glob("horse-*.prof"))
        inside = [float(f.stem.rsplit("-", 1)[1]) for f in files]
        report = sys.stderr
        print(
            f"job {args.job}: {len(files)} horses, {args.jobs / took:.1f} jobs/s ({took / args.jobs * 1000:.1f} ms "
            f"per job, parent wall); perform_job inside the horse: median "
            f"{sorted(inside)[len(inside) // 2]:.1f} ms (profiled)",
            file=report,
        )
        merged = pstats.Stats(str(files[0]))
        for f in files[1:]:
            merged.add(str(f))
        merged.files = []  # type: ignore[attr-defined]  # one header line per horse otherwise
        print(top(merged, args.top), file=report)
        if args.only:
            out = io.StringIO()
            merged.stream = out  # type: ignore[attr-defined]
            merged.sort_stats("cumulative").print_stats(args.only, args.top)
            print(out.getvalue(), file=report)
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
