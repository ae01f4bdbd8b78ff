"""``alert-worker status`` with no id (docs/contract.md §6.4) on the real Postgres and Redis."""

from __future__ import annotations

import json

import psycopg
import pytest
import redis
from psycopg_pool import ConnectionPool
from rq.scheduler import RQScheduler

from alert_worker.liveness import scheduler_locks
from alert_worker.overview import collect_overview
from tests.support.cli import run_cli

pytestmark = pytest.mark.integration

ROWS = """
INSERT INTO alert_deliveries (id, channel, recipient, recipient_hash, status, next_attempt_at, created_at)
VALUES
  ('due-old', 'email', 'o***@example.com', 'h1', 'pending', NULL, now() - interval '120 seconds'),
  ('due-retry', 'sms', '***4567', 'h2', 'pending', now() - interval '30 seconds', now() - interval '1 hour'),
  ('not-due', 'slack', 'hooks.slack.com/***', 'h3', 'pending', now() + interval '1 hour', now() - interval '2 hours'),
  ('busy', 'email', 'o***@example.com', 'h1', 'in_progress', NULL, now()),
  ('done-1', 'email', 'o***@example.com', 'h1', 'delivered', NULL, now()),
  ('done-2', 'email', 'o***@example.com', 'h1', 'delivered', NULL, now()),
  ('gone', 'slack', 'hooks.slack.com/***', 'h3', 'failed', NULL, now()),
  ('parked', 'sms', '***4567', 'h2', 'poison', NULL, now());
INSERT INTO alert_suppressions (channel, recipient_hash, recipient, reason, source_delivery_id)
VALUES ('sms', 'h2', '***4567', 'twilio 21610', 'parked'), ('email', 'h9', 'x***@example.com', 'smtp 550 5.1.1', NULL);
"""


@pytest.fixture
def populated(database_url: str, redis_client: redis.Redis) -> None:
    """Rows in every status, two suppressions, two cooldowns, one live and one dead worker, one scheduler."""
    with psycopg.connect(database_url) as conn:
        conn.execute(ROWS)
    redis_client.set("alert:cooldown:slack:aaaa", 1, ex=60)
    redis_client.set("alert:cooldown:email:bbbb", 1, ex=60)
    redis_client.hset("alert:worker:w-live", mapping={"threads": 8, "in_flight": 2, "started_at": "1"})
    redis_client.set("alert:worker:w-live:alive", 1, ex=30)
    redis_client.hset("alert:worker:w-dead", mapping={"threads": 8, "in_flight": 5, "started_at": "1"})
    assert RQScheduler(["alerts"], connection=redis_client).acquire_locks() == {"alerts"}


EXPECTED_DELIVERIES = {
    "pending": {"email": 1, "slack": 1, "sms": 1},
    "in_progress": {"email": 1, "slack": 0, "sms": 0},
    "delivered": {"email": 2, "slack": 0, "sms": 0},
    "failed": {"email": 0, "slack": 1, "sms": 0},
    "poison": {"email": 0, "slack": 0, "sms": 1},
}


@pytest.mark.usefixtures("populated")
def test_the_overview_counts_what_postgres_and_redis_hold(database_url: str, redis_client: redis.Redis) -> None:
    """Counts by status and channel, the oldest due pending age, poison, cooldowns, suppressions, workers."""
    pool = ConnectionPool(database_url, min_size=1, max_size=1, open=True)
    try:
        view = collect_overview(
            database=pool,
            redis_client=redis_client,
            prefix="alert:",
            queues=["alerts", "bulk"],
            scheduler_probe=lambda queues: scheduler_locks(redis_client, queues),
        )
    finally:
        pool.close()
    assert view.deliveries == EXPECTED_DELIVERIES and not view.estimated
    assert view.oldest_due_pending_seconds is not None
    assert 119 <= view.oldest_due_pending_seconds < 160, "due since creation (no next_attempt_at), not the retry"
    assert (view.poison, view.cooldowns, view.suppressions) == (1, 2, 2)
    assert [(w.name, w.threads, w.in_flight) for w in view.workers] == [("w-live", 8, 2)]
    assert view.scheduler == {"alerts": True, "bulk": False}


@pytest.mark.usefixtures("populated")
def test_status_json_prints_exactly_the_contract_object(worker_env: dict[str, str]) -> None:
    """``alert-worker status --json`` (a real subprocess): one object, the §6.4 keys and §8's held, nothing else."""
    done = run_cli(["status", "--json"], {**worker_env, "RQ_QUEUES": "alerts,bulk"})
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert set(data) == {
        "deliveries",
        "oldest_due_pending_seconds",
        "poison",
        "cooldowns",
        "suppressions",
        "workers",
        "scheduler",
        "paused",
        "held",
    }
    assert data["paused"] == {}
    assert data["held"] == {"email": 0, "slack": 0, "sms": 0}
    assert data["deliveries"] == EXPECTED_DELIVERIES
    assert data["workers"] == [{"name": "w-live", "threads": 8, "in_flight": 2}]
    assert data["scheduler"] == {"alerts": True, "bulk": False}
    assert (data["poison"], data["cooldowns"], data["suppressions"]) == (1, 2, 2)


def test_status_on_an_empty_system_says_nothing_is_due_and_no_scheduler(worker_env: dict[str, str]) -> None:
    """Fresh install: zeros, ``none due``, and the missing scheduler spelled out on the screen."""
    done = run_cli(["status"], worker_env)
    assert done.returncode == 0, done.stderr
    assert "oldest due pending: none due" in done.stdout
    assert "workers: 0 live, 0/0 threads busy" in done.stdout
    assert "scheduler for alerts: NO SCHEDULER" in done.stdout


def test_status_shows_a_paused_channel_and_its_reason(worker_env: dict[str, str], redis_client: redis.Redis) -> None:
    """§7.7: the overview (text and --json) names the paused channel and the provider's refusal."""
    redis_client.set("alert:paused:email", "smtp_auth_failed 535: check SMTP_USER and SMTP_PASSWORD", ex=300)
    done = run_cli(["status", "--json"], worker_env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["paused"] == {"email": "smtp_auth_failed 535: check SMTP_USER and SMTP_PASSWORD"}
    text = run_cli(["status"], worker_env)
    assert "PAUSED email: smtp_auth_failed 535" in text.stdout
