"""``alert-worker run`` whose Postgres proxy freezes right after Slack accepted a message (docs/contract.md §7.3;
the f02b reproduction).

The proxy in front of Postgres stops relaying but keeps every socket open and its kernel keeps ACKing
(``tests/support/freezing_proxy.py``): keepalives and ``tcp_user_timeout`` never fire, so only the job timeout
can end the ``delivered`` write. It does: the death penalty shuts down the sockets of the connections the job's
thread holds, the job ends within ``ALERT_JOB_TIMEOUT_SECONDS`` + 15 s and the worker stays up; a SIGTERM while
the proxy is still frozen stops it promptly. Once the proxy relays again, the next worker reclaims the row and
ends it ``delivered`` from the sent marker written before the write: one POST in all.
"""

from __future__ import annotations

import signal
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
from tests.support.freezing_proxy import FreezingProxy, freezing_proxy
from tests.support.http_server import serving
from tests.support.processes import wait_until
from tests.support.silent_network import database_target

pytestmark = pytest.mark.e2e

JOB_TIMEOUT = 6
SEND_TIMEOUT = 2
STUCK_AFTER = 12
MARGIN = 20  # a loaded 2-core machine; without the cut the write waits until the proxy relays again
STOP_BOUND = 30  # "promptly": nothing in flight, so no drain (which could take the job timeout + 30 s)


class Webhook:
    """Counts POSTs; the first one freezes the database proxy before it answers 200."""

    def __init__(self, proxy: FreezingProxy) -> None:
        self.proxy = proxy
        self.posts = 0
        self.lock = threading.Lock()
        self.url = ""

    def accept(self) -> None:
        with self.lock:
            self.posts += 1
            first = self.posts == 1
        if first:
            self.proxy.freeze()  # the provider has it; Postgres will hear nothing more for now


@pytest.fixture
def proxy(database_url: str) -> Iterator[FreezingProxy]:
    with freezing_proxy(database_target(database_url)) as made:
        yield made


@pytest.fixture
def webhook(proxy: FreezingProxy) -> Iterator[Webhook]:
    hook = Webhook(proxy)

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
        hook.url = f"{base_url}/services/T0/B0/frozenpg"
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


def test_a_delivery_whose_postgres_proxy_freezes_after_the_send_ends_and_is_delivered_once_after_it_thaws(
    env: dict[str, str], database_url: str, redis_client: redis.Redis, proxy: FreezingProxy, webhook: Webhook
) -> None:
    producer = Settings.from_env(env)  # the producer reaches Postgres directly; only the workers use the proxy
    marker = RedisKeys(producer.redis_key_prefix).sent("frozen-1")
    through_proxy = {**env, "DATABASE_URL": proxy.dsn(database_url)}
    with worker_process(["run", "--threads", "2"], through_proxy) as first:
        wait_until(lambda: bool(redis_client.keys("alert:worker:*:alive")), timeout=60, what="the registration")
        send_alert("slack", webhook.url, "Disk full", "db-1 at 99%", delivery_id="frozen-1", settings=producer)
        wait_until(lambda: webhook.posts == 1, timeout=60, what="the webhook to accept the message")

        # The job ends (RQ records it failed) within the job timeout + 15 s, not when the proxy relays again.
        wait_until(
            lambda: (
                FailedJobRegistry("alerts", connection=redis_client).count == 1
                and StartedJobRegistry("alerts", connection=redis_client).count == 0
            ),
            timeout=JOB_TIMEOUT + 15 + MARGIN,
            what="the delivery behind the frozen proxy to end",
        )
        assert first.alive(), first.text()[-4000:]
        assert redis_client.exists(marker) == 1, "the acceptance is kept for the next claim"
        assert '"job_timeout_cut_database_connections"' in first.text(), first.text()[-4000:]

        assert first.process is not None
        first.process.send_signal(signal.SIGTERM)  # the proxy still frozen
        wait_until(lambda: not first.alive(), timeout=STOP_BOUND + MARGIN, what="the warm stop")
        assert first.process.returncode == 0, first.text()[-4000:]
        assert _status(database_url, "frozen-1") == "in_progress", "left claimed, for the reclaim"

    proxy.thaw()
    with worker_process(["run", "--threads", "2"], through_proxy) as second:
        wait_until(
            lambda: _status(database_url, "frozen-1") == "delivered",
            timeout=STUCK_AFTER + 30 + MARGIN,
            what="the reclaimed row to end delivered",
        )
        assert webhook.posts == 1, "the sent marker ends the reclaim: nothing is sent twice"
        assert '"source": "sent_marker"' in second.text(), second.text()[-4000:]
        assert redis_client.exists(marker) == 0
