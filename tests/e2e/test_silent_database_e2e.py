"""``alert-worker run`` whose Postgres goes silent right after Slack accepted a message (docs/contract.md §7.3).

The network to Postgres drops everything without a word (a veth link into a network namespace taken down,
``tests/support/silent_network.py``) while the webhook answers 200. The ``delivered`` write then waits on a
silent socket, where the job timeout cannot reach it: TCP keepalives and ``tcp_user_timeout`` end it, so the
delivery ends within ``ALERT_JOB_TIMEOUT_SECONDS`` + 15 s. The sent marker was written before that write, so
once the network heals the row is reclaimed and ends ``delivered`` without a second POST.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import psycopg
import pytest
import redis
from rq.registry import FailedJobRegistry, StartedJobRegistry

from alert_worker.keys import RedisKeys
from alert_worker.producer import send_alert
from alert_worker.settings import Settings
from tests.support.cli import worker_process
from tests.support.http_server import serving
from tests.support.processes import wait_until
from tests.support.silent_network import SilentLink, database_target, silent_link_or_skip

pytestmark = pytest.mark.e2e

JOB_TIMEOUT = 6
SEND_TIMEOUT = 2
STUCK_AFTER = 12
MARGIN = 20  # a loaded 2-core machine; without the options the write waits ~15 min for TCP to give up


class Webhook:
    """Counts POSTs; the first one silences the database link before it answers 200."""

    def __init__(self, link: SilentLink) -> None:
        self.link = link
        self.posts = 0
        self.lock = threading.Lock()
        self.url = ""

    def accept(self) -> None:
        with self.lock:
            self.posts += 1
            first = self.posts == 1
        if first:
            self.link.silence()  # the provider has it; Postgres will hear nothing more


@pytest.fixture
def link(database_url: str) -> Iterator[SilentLink]:
    with silent_link_or_skip(database_target(database_url)) as made:
        yield made


@pytest.fixture
def webhook(link: SilentLink) -> Iterator[Webhook]:
    hook = Webhook(link)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hook.accept()
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    with serving(Handler) as base_url:
        hook.url = f"{base_url}/services/T0/B0/silentpg"
        yield hook


def _status(database_url: str, delivery_id: str) -> str | None:
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        found = conn.execute("SELECT status FROM alert_deliveries WHERE id = %s", (delivery_id,)).fetchone()
    return None if found is None else str(found[0])


@pytest.fixture
def env(worker_env: dict[str, str]) -> dict[str, str]:
    return {
        **worker_env,
        "SLACK_WEBHOOK_HOSTS": "127.0.0.1",
        "ALERT_RATE_SLACK_PER_RECIPIENT_HOUR": "0",
        "ALERT_SEND_TIMEOUT_SECONDS": str(SEND_TIMEOUT),
        "ALERT_JOB_TIMEOUT_SECONDS": str(JOB_TIMEOUT),
        "ALERT_STUCK_AFTER_SECONDS": str(STUCK_AFTER),
        "ALERT_SWEEP_INTERVAL_SECONDS": "1",
        "ALERT_SWEEP_GRACE_SECONDS": "2",
        "ALERT_RETRY_DELAYS": "1",
    }


def test_a_delivery_whose_postgres_goes_silent_after_the_send_ends_and_is_not_sent_again(
    env: dict[str, str], database_url: str, redis_client: redis.Redis, link: SilentLink, webhook: Webhook
) -> None:
    producer = Settings.from_env(env)  # the producer reaches Postgres directly; only the worker goes silent
    marker = RedisKeys(producer.redis_key_prefix).sent("silent-1")
    with worker_process(["run", "--threads", "2"], {**env, "DATABASE_URL": link.dsn(database_url)}) as worker:
        wait_until(lambda: bool(redis_client.keys("alert:worker:*:alive")), timeout=60, what="the registration")
        send_alert("slack", webhook.url, "Disk full", "db-1 at 99%", delivery_id="silent-1", settings=producer)
        wait_until(lambda: webhook.posts == 1, timeout=60, what="the webhook to accept the message")

        # The job ends (RQ records it failed) within the job timeout + 15 s, not when TCP gives up.
        wait_until(
            lambda: (
                FailedJobRegistry("alerts", connection=redis_client).count == 1
                and StartedJobRegistry("alerts", connection=redis_client).count == 0
            ),
            timeout=JOB_TIMEOUT + 15 + MARGIN,
            what="the delivery on the silent network to end",
        )
        assert worker.alive(), worker.text()[-4000:]
        assert redis_client.exists(marker) == 1, "the acceptance is kept for the next claim"

        link.heal()
        wait_until(
            lambda: _status(database_url, "silent-1") == "delivered",
            timeout=STUCK_AFTER + 30 + MARGIN,
            what="the reclaimed row to end delivered",
        )
        assert webhook.posts == 1, "the sent marker ends the reclaim: nothing is sent twice"
        assert '"source": "sent_marker"' in worker.text(), worker.text()[-4000:]
        assert redis_client.exists(marker) == 0


def test_a_worker_killed_while_its_delivered_write_hangs_leaves_the_sent_marker_for_the_next(
    env: dict[str, str], database_url: str, redis_client: redis.Redis, link: SilentLink, webhook: Webhook
) -> None:
    """The marker is written before the write, not when it fails: a process that never sees the failure (kill -9,
    OOM, a cold stop) still leaves it, and the dead-worker reclaim ends the row delivered with no second POST."""
    producer = Settings.from_env(env)
    marker = RedisKeys(producer.redis_key_prefix).sent("silent-2")
    with worker_process(["run", "--threads", "2"], {**env, "DATABASE_URL": link.dsn(database_url)}) as first:
        wait_until(lambda: bool(redis_client.keys("alert:worker:*:alive")), timeout=60, what="the registration")
        send_alert("slack", webhook.url, "Disk full", "db-1 at 99%", delivery_id="silent-2", settings=producer)
        wait_until(lambda: webhook.posts == 1, timeout=60, what="the webhook to accept the message")

        def kept_while_the_write_hangs() -> bool:
            # no failure seen yet (the write has not ended) and the acceptance already in Redis
            logged = first.text()
            return (
                "sent_marker_recorded" not in logged
                and "delivery_crashed" not in logged
                and bool(redis_client.exists(marker))
            )

        wait_until(kept_while_the_write_hangs, timeout=30, what="the sent marker while the write hangs")
        first.kill()
    link.heal()
    with worker_process(["run", "--threads", "2"], env) as second:
        wait_until(
            lambda: _status(database_url, "silent-2") == "delivered",
            timeout=JOB_TIMEOUT + 30 + MARGIN,
            what="the dead worker's row to end delivered",
        )
        assert webhook.posts == 1, "the sent marker ends the reclaim: nothing is sent twice"
        assert '"source": "sent_marker"' in second.text(), second.text()[-4000:]
