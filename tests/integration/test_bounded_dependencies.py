"""A delivery on the threaded worker's shared connections ends when a dependency stops answering.

A thread cannot be killed, so each blocking call carries its own bound (docs/contract.md §6.1). Each test makes
one dependency hang and checks the delivery's outcome; the outer join is only a guard against a hang.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis

from alert_worker.entrypoint import job_request, run_delivery_job
from alert_worker.producer import send_alert
from alert_worker.settings import Settings
from alert_worker.threaded_worker import open_shared_resources
from alert_worker.wiring import DatabaseUnreachableError
from tests.support.cli import preserved_logging

pytestmark = pytest.mark.integration

JOB_TIMEOUT = 6


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never says a word."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    listener.close()


@pytest.fixture
def bounded_env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, "ALERT_SEND_TIMEOUT_SECONDS": "1", "ALERT_JOB_TIMEOUT_SECONDS": str(JOB_TIMEOUT)}


def _deliver(env: dict[str, str], delivery_id: str, channel: str, to: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """One delivery as a job thread of the threaded worker runs it (shared pool and client, owned=False)."""
    settings = Settings.from_env(env)
    shared = open_shared_resources(settings, threads=2)
    try:
        with monkeypatch.context() as patch, preserved_logging():
            for name, value in env.items():
                patch.setenv(name, value)
            _, request = job_request(delivery_id, channel, to, "s", "b", 0)
            return _ended(lambda: run_delivery_job(request, settings=settings, open_resources=lambda _: shared))
    finally:
        shared.close_now()


def _ended(action: Callable[[], Any]) -> Any:
    """Run ``action`` in a thread; fail if it is still blocked well after the job timeout."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = action()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=JOB_TIMEOUT * 5)
    assert not thread.is_alive(), "the delivery is still blocked"
    if "error" in box:
        raise box["error"]
    return box["result"]


def _status(database_url: str, delivery_id: str) -> str:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT status FROM alert_deliveries WHERE id = %s", (delivery_id,)).fetchone()
    return str(row[0]) if row else "missing"


def test_an_smtp_server_that_accepts_and_never_replies_ends_in_a_scheduled_retry(
    bounded_env: dict[str, str], silent_server: int, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The send timeout ends the conversation: transient, retry scheduled, row pending."""
    env = {**bounded_env, "SMTP_PORT": str(silent_server)}
    result = _deliver(env, "smtp-hang", "email", "ops@example.com", monkeypatch)
    assert (result["outcome"], result["retryable"]) == ("retry_scheduled", True)
    assert _status(database_url, "smtp-hang") == "pending"


def test_a_webhook_that_never_answers_ends_in_a_scheduled_retry(
    bounded_env: dict[str, str], silent_server: int, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HTTP read timeout ends the request: transient, retry scheduled."""
    env = {**bounded_env, "SLACK_WEBHOOK_HOSTS": "127.0.0.1"}
    result = _deliver(env, "hook-hang", "slack", f"http://127.0.0.1:{silent_server}/services/T/B/x", monkeypatch)
    assert (result["outcome"], result["retryable"]) == ("retry_scheduled", True)
    assert _status(database_url, "hook-hang") == "pending"


def test_a_row_lock_held_by_another_connection_ends_the_claim_with_a_lock_timeout(
    bounded_env: dict[str, str], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's lock_timeout/statement_timeout end the blocked claim; nothing is sent, the row stays pending,
    and the error is the one that makes the job copy itself for later (nothing was claimed)."""
    send_alert("email", "ops@example.com", "s", "b", delivery_id="locked", settings=Settings.from_env(bounded_env))
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT 1 FROM alert_deliveries WHERE id = 'locked' FOR UPDATE")
        # Nothing was claimed, so the job treats it like an unreachable database: it may run again later.
        with pytest.raises(DatabaseUnreachableError) as caught:
            _deliver(bounded_env, "locked", "email", "ops@example.com", monkeypatch)
        assert isinstance(caught.value.__cause__, (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled))
        holder.rollback()
    assert _status(database_url, "locked") == "pending"


def test_redis_under_client_pause_ends_the_delivery_fail_closed(
    bounded_env: dict[str, str], database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes paused server-wide (briefly; unpaused in finally): the rate limiter cannot answer, so the
    delivery is handed back pending for the sweep, and nothing is sent."""
    send_alert("email", "ops@example.com", "s", "b", delivery_id="paused", settings=Settings.from_env(bounded_env))
    control = redis.Redis.from_url(redis_url)
    control.execute_command("CLIENT", "PAUSE", str(JOB_TIMEOUT * 1000), "WRITE")
    try:
        result = _deliver(bounded_env, "paused", "email", "ops@example.com", monkeypatch)
    finally:
        control.execute_command("CLIENT", "UNPAUSE")
        control.close()
    assert result["outcome"] != "delivered"
    assert _status(database_url, "paused") == "pending"
