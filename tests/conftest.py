"""Shared fixtures: throwaway Postgres databases, a private Redis db per test session, a loopback SMTP server.

Real services are found through ``TEST_DATABASE_URL`` (an admin DSN; default the local ``postgres``
database) and ``TEST_REDIS_URL``. Every test that touches them gets its own database (cloned from a
migrated template) and a Redis db number locked for this pytest process and flushed around each test.

Every test is marked by its directory (``unit``, ``integration``, ``e2e``, ``crash``, ``cluster``), so
``pytest -m unit`` is the fast loop and ``-m "not crash"`` skips the slow suite.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis

from tests.cluster.pgbouncer import running_pgbouncer, via_pgbouncer
from tests.support.smtp import SmtpSink, running_smtp_sink

ADMIN_DSN = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
_DB_LOCK_PREFIX = "alert_worker_test:db-lock:"
DIRECTORY_MARKERS = ("unit", "integration", "e2e", "crash", "cluster")
_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the directory it lives in: what it needs follows from where it is."""
    for item in items:
        try:
            top = Path(item.path).resolve().relative_to(_TESTS).parts[0]
        except ValueError:
            continue
        if top in DIRECTORY_MARKERS:
            item.add_marker(getattr(pytest.mark, top))
# TEST_DATABASE_VIA=pgbouncer: every test database is reached through a private PgBouncer in transaction
# mode (tests/cluster/pgbouncer.py) and workers get ALERT_DB_POOLER=pgbouncer.
POOLER_ENV = {"ALERT_DB_POOLER": "pgbouncer"} if via_pgbouncer() else {}


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _admin() -> psycopg.Connection:
    return psycopg.connect(ADMIN_DSN, autocommit=True)


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A migrated database that each test's database is cloned from (cheaper than migrating each)."""
    from alert_worker.resources import open_pool
    from alert_worker.settings import Settings
    from alert_worker.store import DeliveryStore

    name = f"alert_tmpl_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(ADMIN_DSN, name)
    pool = open_pool(Settings(database_url=url, redis_url=""))
    try:
        DeliveryStore(pool=pool).migrate()
    finally:
        pool.close()
    yield name
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_front() -> Iterator[Callable[[str], str]]:
    """How tests reach their database: directly, or through PgBouncer (TEST_DATABASE_VIA=pgbouncer)."""
    if not via_pgbouncer():
        yield lambda url: url
        return
    with running_pgbouncer(upstream=ADMIN_DSN) as bouncer:
        yield bouncer.route


@pytest.fixture
def database_url(template_database: str, database_front: Callable[[str], str]) -> Iterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    name = f"alert_test_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield database_front(_with_database(ADMIN_DSN, name))
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_db_number() -> Iterator[int]:
    """Lock one Redis db (1-15) for this pytest process so parallel runs never share keys."""
    control = redis.Redis.from_url(f"{REDIS_BASE_URL}/0")
    token = uuid.uuid4().hex
    for number in range(1, 16):
        if control.set(f"{_DB_LOCK_PREFIX}{number}", token, nx=True, ex=3600):
            break
    else:
        pytest.fail("no free Redis db (1-15) for this test session")
    try:
        yield number
    finally:
        redis.Redis.from_url(f"{REDIS_BASE_URL}/{number}").flushdb()
        if control.get(f"{_DB_LOCK_PREFIX}{number}") == token.encode():
            control.delete(f"{_DB_LOCK_PREFIX}{number}")
        control.close()


@pytest.fixture
def redis_url(redis_db_number: int) -> Iterator[str]:
    """This session's Redis db, flushed before and after the test."""
    url = f"{REDIS_BASE_URL}/{redis_db_number}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url=redis_url)
    yield client
    client.close()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with running_smtp_sink() as sink:
        yield sink


@pytest.fixture
def worker_env(database_url: str, redis_url: str, smtp_sink: SmtpSink) -> dict[str, str]:
    """Environment for a worker process or an in-process job against the test services."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_sink.port),
        "SMTP_SECURITY": "none",
        "ALERTS_FROM_EMAIL": "alerts@example.org",
        "ALERT_RECIPIENT_HASH_SECRET": "test-secret",
        "ALERT_SEND_TIMEOUT_SECONDS": "5",
        **POOLER_ENV,
    }
