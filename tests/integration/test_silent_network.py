"""Postgres on a silent network (docs/contract.md §7.3): every connection carries TCP keepalives and a
``tcp_user_timeout``, so a call whose peer went silent fails within the send timeout + 10 s."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis

from alert_worker import health, metrics_server, resources, threaded_worker
from alert_worker.connect import postgres_kwargs
from alert_worker.settings import Settings
from tests.support.processes import wait_until
from tests.support.silent_network import database_target, silent_link_or_skip

pytestmark = pytest.mark.integration

SEND_TIMEOUT = 2  # small, so the test is quick: a silent call fails within 2 + 10 s
BOUND = SEND_TIMEOUT + 10
MARGIN = 15  # a loaded 2-core machine; without the options the call waits ~15 min for TCP to give up


@pytest.fixture
def settings(worker_env: dict[str, str]) -> Settings:
    return Settings.from_env({**worker_env, "ALERT_SEND_TIMEOUT_SECONDS": str(SEND_TIMEOUT)})


def _socket_options(conn: psycopg.Connection[Any]) -> dict[str, int]:
    sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    try:
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
    finally:
        sock.close()


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, int]]]:
    """The socket options of every psycopg connection opened while the test runs (pools' threads too)."""
    seen: list[dict[str, int]] = []
    original = psycopg.Connection.connect.__func__  # type: ignore[attr-defined]

    def connect(cls: type[psycopg.Connection[Any]], *args: Any, **kwargs: Any) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] = original(cls, *args, **kwargs)
        seen.append(_socket_options(conn))
        return conn

    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(connect))
    monkeypatch.setattr(psycopg, "connect", psycopg.Connection.connect)  # an alias bound at import
    yield seen


def _job_pool(settings: Settings) -> None:
    with resources.open_job_pool(settings) as pool, pool.connection() as conn:
        conn.execute("SELECT 1")


def _process_pool(settings: Settings) -> None:
    with resources.open_pool(settings, check=True) as pool, pool.connection() as conn:
        conn.execute("SELECT 1")


def _threaded_worker_pool(settings: Settings) -> None:
    shared = threaded_worker.open_shared_resources(settings, threads=2)
    try:
        with shared.pool.connection() as conn:
            conn.execute("SELECT 1")
    finally:
        shared.close_now()


def _short_lived(settings: Settings) -> None:
    with resources.short_lived(settings) as conns:
        conns.store.counts()
        conns.store.recipient_hash_secret()


def _metrics_scrape(settings: Settings) -> None:
    collector = metrics_server.collector_for(settings, client_factory=lambda: redis.Redis.from_url(settings.redis_url))
    metrics_server.render(collector)


ENTRY_POINTS: dict[str, Callable[[Settings], None]] = {
    "job-scope-pool": _job_pool,
    "process-scope-pool": _process_pool,
    "threaded-worker-pool": _threaded_worker_pool,
    "cli-and-sweep-short-lived-with-hash-secret": _short_lived,
    "start-up-check": health.check_database,
    "metrics-scrape": _metrics_scrape,
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS.values()), ids=list(ENTRY_POINTS))
def test_every_connection_the_package_opens_sets_keepalives_and_a_tcp_user_timeout(
    settings: Settings, opened: list[dict[str, int]], entry: Callable[[Settings], None]
) -> None:
    """Read back from the kernel: the options are on the socket, derived from the send timeout."""
    entry(settings)
    assert opened, "the entry point opened no connection"
    expected = {
        "keepalive": 1,
        "idle": SEND_TIMEOUT,
        "interval": 2,
        "count": 3,
        "user_timeout_ms": (SEND_TIMEOUT + 5) * 1000,
    }
    assert all(options == expected for options in opened), opened


def _query_in_thread(conn: psycopg.Connection[Any], sql: str) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            conn.execute(sql).fetchone()
            result["end"] = "returned"
        except psycopg.Error as exc:
            result["end"] = type(exc)
        result["done_at"] = time.monotonic()

    thread = threading.Thread(target=run, name="silent-query", daemon=True)
    thread.start()
    return thread, result


@pytest.mark.parametrize(
    "silent_while_running",
    [False, True],
    ids=["silent-before-the-query-is-sent", "silent-while-the-query-runs"],
)
def test_a_query_on_a_silent_network_fails_within_the_send_timeout_plus_ten_seconds(
    settings: Settings, database_url: str, silent_while_running: bool
) -> None:
    """Before: the query is never acknowledged (tcp_user_timeout). While running: the answer never comes
    and the probes go unanswered (keepalives). Either way an OperationalError, not a wait for ~15 min."""
    with silent_link_or_skip(database_target(database_url)) as link:
        conn = psycopg.connect(link.dsn(database_url), **postgres_kwargs(settings))
        try:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            if silent_while_running:
                thread, result = _query_in_thread(conn, "SELECT pg_sleep(1)")
                time.sleep(0.3)  # let the query reach the server before the link goes quiet
                link.silence()
            else:
                link.silence()
                thread, result = _query_in_thread(conn, "SELECT 1")
            silent_at = time.monotonic()
            wait_until(lambda: not thread.is_alive(), timeout=BOUND + MARGIN, what="the silent query to end")
            assert result["end"] is psycopg.OperationalError
            assert result["done_at"] - silent_at < BOUND + MARGIN
        finally:
            link.heal()
            conn.close()


def test_a_silent_link_really_drops_what_a_loopback_proxy_would_acknowledge(database_url: str) -> None:
    """The fixture's own check: with the options off, a silenced query is still waiting after the bound
    (so the test above would fail without them)."""
    with silent_link_or_skip(database_target(database_url)) as link:
        conn = psycopg.connect(link.dsn(database_url), autocommit=True, connect_timeout=5)
        try:
            link.silence()
            thread, _ = _query_in_thread(conn, "SELECT 1")
            thread.join(BOUND + 1)
            assert thread.is_alive(), "without keepalives and tcp_user_timeout the call cannot know"
        finally:
            _cut(conn)  # shutdown(2) wakes the waiting call at once
            wait_until(lambda: not thread.is_alive(), timeout=30, what="the cut query to end")
            conn.close()


def _cut(conn: psycopg.Connection[Any]) -> None:
    sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()
