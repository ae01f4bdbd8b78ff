"""The bench's private services: a throwaway database, a locked Redis db, a timestamping SMTP sink.

The Redis db is locked with the same key in db 0 as ``tests/conftest.py`` uses, so a bench run and a
test session never share (or flush) each other's db.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from aiosmtpd.controller import Controller

ADMIN_DSN = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
DB_LOCK_PREFIX = "alert_worker_test:db-lock:"  # shared with tests/conftest.py


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


@contextmanager
def throwaway_database() -> Iterator[str]:
    """A fresh migrated database, dropped on the way out."""
    from alert_worker.resources import open_pool
    from alert_worker.settings import Settings
    from alert_worker.store import DeliveryStore

    name = f"alert_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(ADMIN_DSN, name)
    try:
        pool = open_pool(Settings(database_url=url, redis_url=""))
        try:
            DeliveryStore(pool=pool).migrate()
        finally:
            pool.close()
        yield url
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def locked_redis_db() -> Iterator[str]:
    """A Redis db number (1-15) nobody else holds, flushed before and after use."""
    control = redis.Redis.from_url(f"{REDIS_BASE_URL}/0")
    token = uuid.uuid4().hex
    for number in range(15, 0, -1):  # from the top: test sessions lock from 1 upwards
        if control.set(f"{DB_LOCK_PREFIX}{number}", token, nx=True, ex=3600):
            break
    else:
        raise RuntimeError("no free Redis db (1-15) for the bench")
    url = f"{REDIS_BASE_URL}/{number}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
        if control.get(f"{DB_LOCK_PREFIX}{number}") == token.encode():
            control.delete(f"{DB_LOCK_PREFIX}{number}")
        control.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class TimingSink:
    """Accepts every message and records when it was accepted, keyed by its ``X-Delivery-Id`` header
    (falling back to the subject), using the same clock the enqueuer uses (``time.time``)."""

    port: int = 0
    accepted_at: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        key = subject_of(envelope.original_content)
        with self.lock:
            self.accepted_at[key] = now
        return "250 2.0.0 OK queued"

    def count(self, prefix: str) -> int:
        with self.lock:
            return sum(1 for key in self.accepted_at if key.startswith(prefix))

    def times(self, prefix: str) -> dict[str, float]:
        with self.lock:
            return {k: v for k, v in self.accepted_at.items() if k.startswith(prefix)}


def subject_of(content: bytes) -> str:
    for line in content.split(b"\r\n" if b"\r\n" in content else b"\n"):
        if not line:
            break
        if line.lower().startswith(b"subject:"):
            return line[8:].strip().decode("ascii", "replace")
    return ""


@contextmanager
def running_sink() -> Iterator[TimingSink]:
    sink = TimingSink(port=free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()
