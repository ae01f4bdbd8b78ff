"""The thread-pooled worker keeps its provider sessions per thread (issue 11): on the real servers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import psycopg
import pytest
import redis
from rq import Queue

from alert_worker.producer import send_alert
from alert_worker.settings import Settings
from alert_worker.threaded_worker import ThreadPoolWorker
from tests.integration.counting_webhook import CountingWebhook, running_counting_webhook
from tests.support.cli import preserved_logging
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

NO_LIMITS = {
    f"ALERT_RATE_{name}": "0"
    for name in (
        "SLACK_PER_MIN",
        "SLACK_PER_RECIPIENT_HOUR",
        "SMS_PER_MIN",
        "SMS_PER_RECIPIENT_HOUR",
        "GLOBAL_PER_MIN",
    )
}


@pytest.fixture
def webhook() -> Iterator[CountingWebhook]:
    with running_counting_webhook() as hook:
        yield hook


def _burst(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], client: redis.Redis, threads: int) -> None:
    with monkeypatch.context() as patch, preserved_logging():
        for name, value in env.items():
            patch.setenv(name, value)
        worker = ThreadPoolWorker(
            [Queue("alerts", connection=client)], connection=client, settings=Settings.from_env(env), threads=threads
        )
        worker.work(burst=True)


def _delivered(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM alert_deliveries WHERE status = 'delivered'").fetchone()
    return int(row[0]) if row else 0


def test_n_slack_deliveries_on_t_threads_use_at_most_t_connections_and_close_them_at_stop(
    worker_env: dict[str, str],
    webhook: CountingWebhook,
    redis_client: redis.Redis,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """12 Slack posts on 3 threads: at most 3 TCP connections (keep-alive), all closed when the worker stops."""
    env = {**worker_env, **NO_LIMITS, "SLACK_WEBHOOK_URL": webhook.url, "SLACK_WEBHOOK_HOSTS": "127.0.0.1"}
    settings = Settings.from_env(env)
    for i in range(12):
        send_alert("slack", "default", f"s{i}", "b", delivery_id=f"k-{i}", settings=settings)

    _burst(monkeypatch, env, redis_client, threads=3)

    assert _delivered(database_url) == 12
    assert webhook.posts == 12
    assert 1 <= webhook.accepted <= 3
    wait_until(lambda: webhook.ended == webhook.accepted, timeout=10, what="every kept connection closed")


class CountingTwilio:
    """Stands in for ``twilio.rest.Client``: counts constructions per thread and accepts every message."""

    builds: ClassVar[list[int]] = []
    sent: ClassVar[int] = 0
    lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with CountingTwilio.lock:
            CountingTwilio.builds.append(threading.get_ident())
        self.messages = self

    def create(self, **kwargs: Any) -> Any:
        with CountingTwilio.lock:
            CountingTwilio.sent += 1
            return type("Created", (), {"sid": f"SM{CountingTwilio.sent:032d}"})()


def test_the_twilio_client_is_built_once_per_thread(
    worker_env: dict[str, str], redis_client: redis.Redis, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10 SMS on 3 threads: one client per thread that sent, never one per delivery."""
    monkeypatch.setattr("twilio.rest.Client", CountingTwilio)
    monkeypatch.setattr(CountingTwilio, "builds", [])
    env = {
        **worker_env,
        **NO_LIMITS,
        "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
        "TWILIO_AUTH_TOKEN": "token",
        "TWILIO_FROM_NUMBER": "+15005550006",
    }
    settings = Settings.from_env(env)
    for i in range(10):
        send_alert("sms", f"+1415555{i:04d}", "s", "b", delivery_id=f"m-{i}", settings=settings)

    _burst(monkeypatch, env, redis_client, threads=3)

    assert _delivered(database_url) == 10
    assert 1 <= len(CountingTwilio.builds) <= 3
    assert len(set(CountingTwilio.builds)) == len(CountingTwilio.builds), "a thread built a second client"
