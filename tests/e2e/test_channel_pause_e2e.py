"""A channel whose own settings the provider refuses is paused, never a machine for poisoning (contract §7.7).

A real worker process (``alert-worker run --burst --threads 1``), real Postgres and Redis, and a loopback
SMTP server (aiosmtpd) with AUTH that counts every AUTH command it judges.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import psycopg
import pytest
import redis

from alert_worker.producer import send_alert
from alert_worker.settings import Settings
from tests.support.cli import run_cli
from tests.support.processes import wait_until
from tests.support.smtp import SmtpSink, running_smtp_sink

USER, PASSWORD = "alerts", "right-password"
QUEUED = 20


@pytest.fixture
def auth_sink() -> Iterator[SmtpSink]:
    with running_smtp_sink(login=(USER, PASSWORD)) as sink:
        yield sink


def _env(worker_env: dict[str, str], sink: SmtpSink, password: str, **extra: str) -> dict[str, str]:
    return {**worker_env, "SMTP_PORT": str(sink.port), "SMTP_USER": USER, "SMTP_PASSWORD": password, **extra}


def _rows(database_url: str) -> list[tuple[str, str, int, str | None]]:
    with psycopg.connect(database_url) as conn:
        found = conn.execute("SELECT id, status, attempts, error_message FROM alert_deliveries ORDER BY id").fetchall()
    return [(str(r[0]), str(r[1]), int(r[2]), r[3]) for r in found]


def _queue(env: dict[str, str]) -> None:
    settings = Settings.from_env(env)
    for i in range(QUEUED):
        to = f"oncall{i}@example.com"
        send_alert("email", to, "Disk full", "db-1 at 99%", delivery_id=f"p-{i:02d}", settings=settings)


def test_a_wrong_smtp_password_makes_one_login_for_twenty_queued_e_mails_and_poisons_none(
    worker_env: dict[str, str], auth_sink: SmtpSink, database_url: str, redis_client: redis.Redis
) -> None:
    """One thread, twenty e-mails, a wrong password: one login (PLAIN then LOGIN = 2 AUTH commands), the
    channel paused fleet-wide with the reason, every delivery pending with ``channel_paused: ...``."""
    env = _env(worker_env, auth_sink, "wrong-password")
    _queue(env)
    done = run_cli(["run", "--burst", "--threads", "1"], env, timeout=180)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert auth_sink.auth_commands == 2, "one login: smtplib's PLAIN, then LOGIN"
    assert auth_sink.accepted == []
    rows = _rows(database_url)
    assert len(rows) == QUEUED
    assert {status for _, status, _, _ in rows} == {"pending"}, "deferred, never poisoned"
    assert {attempts for _, _, attempts, _ in rows} == {0}, "no attempt used"
    assert {error for *_, error in rows} == {"channel_paused: smtp_auth_failed 535: check SMTP_USER and SMTP_PASSWORD"}
    raw = redis_client.get("alert:paused:email")
    assert isinstance(raw, bytes)
    reason = raw.decode()
    assert reason.startswith("smtp_auth_failed 535")
    assert 0 < redis_client.pttl("alert:paused:email") <= 300_000
    assert PASSWORD not in done.stdout + done.stderr and "wrong-password" not in done.stdout + done.stderr
    overview = run_cli(["status", "--json"], env)
    assert json.loads(overview.stdout)["paused"] == {"email": reason}
    one = json.loads(run_cli(["status", "p-07", "--json"], env).stdout)
    assert one["channel_paused"] == reason and "channel pause" in one["held_by"]


def test_once_the_password_is_fixed_the_paused_deliveries_flow_when_the_pause_ends_without_a_replay(
    worker_env: dict[str, str], auth_sink: SmtpSink, database_url: str, redis_client: redis.Redis
) -> None:
    """The rows stayed pending: a worker with the right password delivers them all once the pause ends."""
    env = _env(worker_env, auth_sink, "wrong-password", ALERT_CHANNEL_PAUSE_SECONDS="2")
    _queue(env)
    assert run_cli(["run", "--burst", "--threads", "1"], env, timeout=180).returncode == 0
    assert auth_sink.auth_commands == 2
    wait_until(lambda: not redis_client.exists("alert:paused:email"), timeout=30, what="the pause to end")
    not_due = "SELECT count(*) FROM alert_deliveries WHERE next_attempt_at > now()"
    with psycopg.connect(database_url, autocommit=True) as conn:  # every deferral due (pause + jitter)
        wait_until(lambda: conn.execute(not_due).fetchone() == (0,), timeout=30, what="the deferrals to be due")
    # and their jobs due in RQ's scheduled registry too (scheduled a little after next_attempt_at): a burst
    # worker enqueues the due ones once, at its start
    wait_until(
        lambda: redis_client.zcount("rq:scheduled:alerts", f"({time.time()}", "+inf") == 0,
        timeout=30,
        what="the deferral jobs to be due in RQ",
    )
    fixed = _env(worker_env, auth_sink, PASSWORD, ALERT_CHANNEL_PAUSE_SECONDS="2")
    done = run_cli(["run", "--burst", "--threads", "1"], fixed, timeout=180)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert {status for _, status, _, _ in _rows(database_url)} == {"delivered"}
    assert len(auth_sink.accepted) == QUEUED
