"""The forking worker's per-job path through PgBouncer (transaction mode) against a direct connection.

``python -m bench.pgbouncer [--jobs N] [--rounds R]``, from the repository root, with Debian's
``pgbouncer`` installed. Case ``b-fork`` of bench.run (``execute_delivery_job``, per-job scope, forking
worker whose parent preloaded the job modules), drained by ``--burst`` workers in interleaved rounds:
once with ``DATABASE_URL`` straight to Postgres, once through a private PgBouncer on loopback with
``ALERT_DB_POOLER=pgbouncer``. Per job the worker opens a new Postgres connection; through PgBouncer that
is a client login to a local bouncer that hands out an already-open server connection.
Last line: ``bench-pgbouncer: direct_jps=… pgbouncer_jps=… pgbouncer_vs_direct=…``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.providers import Answers, running_slow_smtp, running_slow_webhook
from bench.run import Bench
from bench.services import ADMIN_DSN, locked_redis_db, throwaway_database
from tests.cluster.pgbouncer import running_pgbouncer

CASE = "b-fork"


@dataclass
class PooledBench(Bench):
    """The same bench, with workers told that a transaction pooler is in front."""

    def env(self, case: str, queue: str) -> dict[str, str]:
        return {**super().env(case, queue), "ALERT_DB_POOLER": "pgbouncer"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pgbouncer")
    parser.add_argument("--jobs", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rates: dict[str, list[float]] = {"direct": [], "pgbouncer": []}
    with (
        throwaway_database() as database_url,
        locked_redis_db() as redis_url,
        running_slow_smtp(0) as smtp,
        running_slow_webhook(0) as hook,
        running_pgbouncer(upstream=ADMIN_DSN) as bouncer,
        tempfile.TemporaryDirectory(prefix="bench-pgbouncer-") as scratch,
    ):
        providers: dict[int, Answers] = {0: smtp}
        hooks, path = {0: hook}, Path(scratch)
        benches = {
            "direct": Bench(database_url=database_url, redis_url=redis_url, smtp=providers, hooks=hooks, scratch=path),
            "pgbouncer": PooledBench(
                database_url=bouncer.route(database_url), redis_url=redis_url, smtp=providers, hooks=hooks, scratch=path
            ),
        }
        for round_number in range(args.rounds):
            for name, bench in benches.items():
                jps, _, failed = bench.throughput_run(CASE, args.jobs, f"{name}{round_number}")
                if failed:
                    raise RuntimeError(f"{name}: {failed} of {args.jobs} jobs failed")
                rates[name].append(jps)
                print(f"round {round_number} {name}: {jps:.1f} jobs/s", flush=True)
    direct, pooled = statistics.median(rates["direct"]), statistics.median(rates["pgbouncer"])
    print(
        f"bench-pgbouncer: direct_jps={direct:.1f} pgbouncer_jps={pooled:.1f} pgbouncer_vs_direct={pooled / direct:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
