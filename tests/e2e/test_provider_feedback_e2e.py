"""Provider feedback across real worker processes (``python -m alert_worker run``), real Postgres and Redis.

A loopback webhook server stands in for Slack and records when each request arrived
(``SLACK_WEBHOOK_HOSTS=127.0.0.1`` allows plain http on loopback).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import psycopg
import pytest
import redis

from alert_worker.producer import send_alert
from alert_worker.settings import Settings
from tests.support.cli import worker_process
from tests.support.http_server import respond, serving
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e


@dataclass
class Webhook:
    """Answers each scripted reply in turn (status 0: drop the connection), then ``200 ok``; records
    (time, path, status) of every request."""

    replies: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)
    requests: list[tuple[float, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def answer(self, path: str) -> tuple[int, str, dict[str, str]]:
        with self.lock:
            status, body, headers = self.replies.pop(0) if self.replies else (200, "ok", {})
            self.requests.append((time.time(), path, status))
        return status, body, headers


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, body, headers = hook.answer(self.path)
            if status == 0:  # read the whole request, then drop the connection without an answer
                self.close_connection = True
                self.connection.close()
                return
            respond(self, status, body.encode(), headers)

    with serving(Handler) as base_url:
        hook.url = f"{base_url}/services/T0/B0/e2esecret"
        yield hook


@pytest.fixture
def env(worker_env: dict[str, str]) -> dict[str, str]:
    return {
        **worker_env,
        "SLACK_WEBHOOK_HOSTS": "127.0.0.1",
        "ALERT_RATE_SLACK_PER_RECIPIENT_HOUR": "0",
        "ALERT_RETRY_DELAYS": "1",
    }


def _rows(database_url: str) -> dict[str, tuple[str, int, int]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT id, status, attempts, deferrals FROM alert_deliveries").fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _send(env: dict[str, str], to: str, delivery_id: str, queue: str | None = None) -> None:
    send_alert(
        "slack", to, "Disk full", "db-1 at 99%", delivery_id=delivery_id, queue=queue, settings=Settings.from_env(env)
    )


def test_a_429_with_retry_after_5_holds_ten_deliveries_on_two_workers_until_it_passes(
    env: dict[str, str], webhook: Webhook, database_url: str, redis_client: redis.Redis
) -> None:
    """After one 429 (Retry-After: 5), no worker sends to that webhook for 5 s; then all are delivered once.

    Each worker process has a queue of its own (``RQ_QUEUES``), so the ten deliveries are spread over both
    processes by construction: the process that never saw the 429 must hold its five by the shared cooldown.
    """
    env = {**env, "ALERT_DIGEST": "off"}  # deferrals only: with it on, the next message would carry them (§8)
    webhook.replies.append((429, "rate_limited", {"Retry-After": "5"}))
    with ExitStack() as stack:
        workers = [
            stack.enter_context(worker_process(["run"], {**env, "RQ_QUEUES": queue})) for queue in ("alerts", "other")
        ]
        _send(env, webhook.url, "first", queue="alerts")
        wait_until(lambda: any(redis_client.scan_iter("alert:cooldown:slack:*")), timeout=60, what="the cooldown")
        throttled_at = webhook.requests[0][0]
        ids = [f"held-{n}" for n in range(10)]
        for n, delivery_id in enumerate(ids):
            _send(env, webhook.url, delivery_id, queue=("alerts", "other")[n % 2])

        def all_delivered() -> bool:
            rows = _rows(database_url)
            return len(rows) == 11 and all(status == "delivered" for status, _, _ in rows.values())

        wait_until(all_delivered, timeout=90, what="all eleven deliveries")
        logs = [w.text() for w in workers]

    later = [at for at, _, _ in webhook.requests[1:]]
    assert len(webhook.requests) == 12, "one 429, then each of the eleven deliveries exactly once"
    assert min(later) >= throttled_at + 5.0 - 0.05, f"first request {min(later) - throttled_at:.2f}s after the 429"
    assert [status for _, _, status in webhook.requests[1:]] == [200] * 11
    rows = _rows(database_url)
    for delivery_id in ids:
        status, attempts, deferrals = rows[delivery_id]
        assert (status, attempts) == ("delivered", 1), "a cooldown deferral uses no attempt"
        assert deferrals >= 1, f"{delivery_id} was not held by the cooldown"
    deferred_in = [log.count('"event": "delivery_deferred"') for log in logs]
    assert all(n >= 5 for n in deferred_in), f"both worker processes held their deliveries: {deferred_in}"
    assert all("e2esecret" not in log for log in logs), "the webhook path never appears in a log"


def test_a_gone_channel_is_suppressed_for_every_worker(
    env: dict[str, str], webhook: Webhook, database_url: str
) -> None:
    """404 channel_not_found once: the entry is added, and the next delivery (another process) sends nothing."""
    webhook.replies.append((404, "channel_not_found", {}))
    with worker_process(["run"], env):
        _send(env, webhook.url, "gone-1")
        wait_until(lambda: _rows(database_url).get("gone-1", ("",))[0] == "poison", timeout=60, what="poison")
    with worker_process(["run"], env):
        _send(env, webhook.url, "gone-2")
        wait_until(lambda: _rows(database_url).get("gone-2", ("",))[0] == "poison", timeout=60, what="poison")
    with psycopg.connect(database_url) as conn:
        (error,) = conn.execute("SELECT error_message FROM alert_deliveries WHERE id = 'gone-2'").fetchone()  # type: ignore[misc]
        suppressed = conn.execute("SELECT channel, source_delivery_id FROM alert_suppressions").fetchall()
    assert error == "suppressed: slack 404 channel_not_found"
    assert suppressed == [("slack", "gone-1")]
    assert len(webhook.requests) == 1


def test_a_connection_dropped_after_sending_is_recorded_as_an_unknown_outcome_and_retried(
    env: dict[str, str], webhook: Webhook, database_url: str, redis_client: redis.Redis
) -> None:
    """Slack got the request but never answered: ``outcome_unknown:`` is recorded and counted; the retry delivers."""
    webhook.replies.append((0, "", {}))
    with worker_process(["run"], env) as worker:
        _send(env, webhook.url, "unknown-1")
        wait_until(lambda: _rows(database_url).get("unknown-1", ("",))[0] == "delivered", timeout=60, what="delivery")
        log = worker.text()
    assert '"error": "outcome_unknown: slack connection dropped after sending: ConnectionError"' in log
    assert _rows(database_url)["unknown-1"][1] == 2, "the unanswered attempt counts"
    assert redis_client.hget("alert:metrics:unknown_outcomes", "slack") == b"1"
    assert len(webhook.requests) == 2
