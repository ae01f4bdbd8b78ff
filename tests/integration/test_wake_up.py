"""A job that finds its row pending but not yet due schedules a wake-up in RQ's real scheduler registry
(docs/contract.md §6.3) under a deterministic id, for the row's due time, instead of waiting for the sweep."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis
from rq import Queue
from rq.registry import ScheduledJobRegistry

from alert_worker import execute_delivery_job
from alert_worker.rq_jobs import job_id_for
from tests.support.smtp import SmtpSink


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str]) -> None:
    for key, value in worker_env.items():
        monkeypatch.setenv(key, value)


def _push_due_time(database_url: str, delivery_id: str, seconds: int) -> datetime:
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "UPDATE alert_deliveries SET next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s "
            "RETURNING next_attempt_at",
            (seconds, delivery_id),
        ).fetchone()
    assert found is not None
    due: datetime = found[0]
    return due


def test_an_early_job_schedules_a_wake_up_for_the_rows_due_time(
    smtp_sink: SmtpSink, database_url: str, redis_url: str
) -> None:
    """451 leaves the row pending; a job that runs 120 s early leaves one more scheduled job, due then."""
    smtp_sink.data_replies.append("451 4.3.0 try later")
    assert execute_delivery_job("early-1", "email", "ops@example.com", "s", "b")["outcome"] == "retry_scheduled"
    due = _push_due_time(database_url, "early-1", 120)

    result = execute_delivery_job("early-1", "email", "ops@example.com", "s", "b", attempt=1)
    assert result["outcome"] == "skipped" and result["status"] == "pending"
    assert smtp_sink.data_calls == 1, "nothing sent early"

    registry = ScheduledJobRegistry(queue=Queue("alerts", connection=redis.Redis.from_url(redis_url)))
    runner = hashlib.sha256(b"").hexdigest()[:12]  # no RQ job around this in-process call
    expected = job_id_for("early-1", f"due-{due.astimezone(UTC):%Y%m%dT%H%M%S%f}-{runner}")
    assert expected in registry.get_job_ids()
    scheduled = registry.get_scheduled_time(expected)
    assert due <= scheduled <= due + timedelta(seconds=2), "never before next_attempt_at, and not much later"
    job = Queue("alerts", connection=registry.connection).fetch_job(expected)
    assert job is not None and job.description == "alert delivery early-1"
    assert job.kwargs == {"attempt": 1}
