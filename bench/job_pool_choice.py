"""Per-job Postgres access, public psycopg/psycopg_pool API only: which costs least per job?

Each variant opens, runs the three statements a delivery makes (claim, read, mark), and closes,
``N`` times in one process. Run: ``python bench/job_pool_choice.py [DATABASE_URL]``.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, NullConnectionPool

N = 200
KW: dict[str, Any] = {"connect_timeout": 5, "autocommit": True}


def stock_pool(url: str) -> None:
    pool = ConnectionPool(url, min_size=0, max_size=1, kwargs=KW, open=True)
    try:
        for _ in range(3):
            with pool.connection() as conn:
                conn.execute("SELECT 1")
    finally:
        pool.close()


def stock_pool_min1(url: str) -> None:
    pool = ConnectionPool(url, min_size=1, max_size=1, num_workers=1, kwargs=KW, open=True)
    try:
        for _ in range(3):
            with pool.connection() as conn:
                conn.execute("SELECT 1")
    finally:
        pool.close()


def null_pool(url: str) -> None:
    pool = NullConnectionPool(url, max_size=1, num_workers=1, kwargs=KW, open=True)
    try:
        for _ in range(3):
            with pool.connection() as conn:
                conn.execute("SELECT 1")
    finally:
        pool.close()


def plain_connect(url: str) -> None:
    with psycopg.connect(url, **KW) as conn:
        for _ in range(3):
            conn.execute("SELECT 1")


def measure(name: str, fn: Callable[[str], None], url: str) -> None:
    fn(url)
    times = []
    for _ in range(N):
        start = time.perf_counter()
        fn(url)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    print(
        f"{name:<18} median_ms={statistics.median(times):.2f} p95_ms={times[int(N * 0.95)]:.2f} "
        f"threads_after={threading.active_count()}"
    )


if __name__ == "__main__":
    dsn = sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/postgres"
    for label, variant in (
        ("plain_connect", plain_connect),
        ("null_pool", null_pool),
        ("stock_pool_min0", stock_pool),
        ("stock_pool_min1", stock_pool_min1),
    ):
        measure(label, variant, dsn)
