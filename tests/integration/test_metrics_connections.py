"""``/metrics`` on kept connections, and bounded against half-sent requests (docs/contract.md §7.6).

Against the real Postgres and Redis: the connections a scrape uses are found on the servers themselves
(``pg_stat_activity`` by ``application_name``, Redis ``CLIENT LIST`` by client name), so what is measured
is what the servers saw, whatever the code does inside.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import psycopg
import pytest
import redis

from alert_worker.liveness import scheduler_locks
from alert_worker.metrics_server import MAX_HANDLER_THREADS, MetricsServer, collector_for
from alert_worker.settings import Settings
from tests.support.processes import free_port, wait_until

pytestmark = pytest.mark.integration

SCRAPES = 200


def _scrape(port: int) -> dict[str, float]:
    """One GET /metrics; the plain gauges by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as response:
        assert response.status == 200
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split(" ", 1)
            found[name] = float(value)
    return found


class Tagged:
    """The metrics server as ``main()`` builds it, its connections named so the servers can be asked."""

    def __init__(self, database_url: str, redis_url: str, worker_env: dict[str, str]) -> None:
        self.name = f"metrics-{uuid.uuid4().hex[:10]}"
        separator = "&" if "?" in database_url else "?"
        tagged_dsn = f"{database_url}{separator}{urlencode({'application_name': self.name})}"
        settings = Settings.from_env({**worker_env, "DATABASE_URL": tagged_dsn})
        collector = collector_for(
            settings,
            client_factory=lambda: redis.Redis.from_url(redis_url, client_name=self.name),
            scheduler_locks=scheduler_locks,
        )
        self.server = MetricsServer(collector=collector, port=free_port(), addr="127.0.0.1")
        self.database_url = database_url
        self.redis_url = redis_url

    def backends(self) -> list[tuple[int, object]]:
        """(pid, backend_start) of the Postgres sessions the metrics server holds open now."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE application_name = %s ORDER BY pid",
                (self.name,),
            ).fetchall()
        return [(int(pid), start) for pid, start in rows]

    def redis_ids(self) -> list[int]:
        """Ids (Redis numbers every connection anew, increasing) of the metrics server's open connections."""
        observer = redis.Redis.from_url(self.redis_url)
        try:
            return sorted(int(c["id"]) for c in observer.client_list() if c.get("name") == self.name)
        finally:
            observer.close()


@pytest.fixture
def tagged(database_url: str, redis_url: str, worker_env: dict[str, str]) -> Iterator[Tagged]:
    server = Tagged(database_url, redis_url, worker_env)
    yield server
    server.server.close()


@pytest.mark.timeout(300)
def test_two_hundred_scrapes_use_one_postgres_session_and_one_redis_connection(tagged: Tagged) -> None:
    """The first scrape opens one of each; the 199 after it, ten at a time, reuse them (§7.6: at most 2)."""
    port = tagged.server.port
    first = _scrape(port)
    assert first["alert_metrics_redis_up"] == 1 and first["alert_metrics_database_up"] == 1
    backends, redis_ids = tagged.backends(), tagged.redis_ids()
    assert len(backends) == 1, "the first scrape's Postgres session is kept open for the next"
    assert len(redis_ids) == 1, "the first scrape's Redis connection is kept open for the next"

    with ThreadPoolExecutor(10) as pool:
        ups = list(pool.map(lambda _: _scrape(port)["alert_metrics_database_up"], range(SCRAPES - 1)))

    assert ups == [1.0] * (SCRAPES - 1)
    assert tagged.backends() == backends, "every scrape used the same Postgres session"
    assert tagged.redis_ids() == redis_ids, "every scrape used the same Redis connection"


@pytest.mark.timeout(300)
def test_a_kept_connection_that_broke_is_replaced_by_the_next_scrape(tagged: Tagged) -> None:
    """Postgres ends the session (as on a restart) and Redis drops the client: the next scrape is up again,
    on new connections, and so are the ones after it."""
    port = tagged.server.port
    _scrape(port)
    [(pid, _)] = tagged.backends()
    [redis_id] = tagged.redis_ids()
    with psycopg.connect(tagged.database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_until(lambda: not tagged.backends(), timeout=30, what="Postgres ended the metrics session")
    observer = redis.Redis.from_url(tagged.redis_url)
    observer.client_kill_filter(_id=redis_id)
    observer.close()

    for _ in range(3):
        found = _scrape(port)
        assert (found["alert_metrics_database_up"], found["alert_metrics_redis_up"]) == (1, 1)
    [(new_pid, _)] = tagged.backends()
    [new_redis_id] = tagged.redis_ids()
    assert new_pid != pid and new_redis_id > redis_id


def _handler_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())


@pytest.mark.timeout(120)
def test_half_sent_requests_are_dropped_and_never_hold_more_than_the_handler_bound(tagged: Tagged) -> None:
    """More half-sent requests than handlers: each connection is closed by the server within 10 s, no more
    than MAX_HANDLER_THREADS handler threads ever run, and a whole request is served afterwards."""
    port = tagged.server.port
    counts: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            counts.append(_handler_threads())

    sampler = threading.Thread(target=sample)
    sampler.start()
    clients = []
    try:
        for _ in range(MAX_HANDLER_THREADS + 4):
            client = socket.create_connection(("127.0.0.1", port), timeout=30)
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: the request never ends
            clients.append((client, time.monotonic()))
        held = []
        for client, opened in clients:
            client.settimeout(10)
            try:  # the server closes without answering: EOF or a reset, never the 10 s timeout
                while client.recv(4096):
                    pass
            except ConnectionResetError:
                pass
            held.append(time.monotonic() - opened)
    finally:
        done.set()
        sampler.join()
        for client, _ in clients:
            client.close()
    assert max(counts) <= MAX_HANDLER_THREADS
    assert max(held) < 10, f"a half-sent request was held {max(held):.1f} s"
    assert _scrape(port)["alert_metrics_redis_up"] == 1
