"""End to end: a real ``rq worker alerts --with-scheduler --burst`` picks up jobs enqueued as a producer does."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
import redis
from rq import Queue
from rq.registry import ScheduledJobRegistry

from alert_worker.channels.email import message_id_local_part
from alert_worker.entrypoint import execute_delivery_job
from tests.support.processes import rq_burst, wait_until
from tests.support.smtp import SmtpSink

pytestmark = pytest.mark.e2e


def _row(database_url: str, delivery_id: str) -> tuple[str, int]:
    with psycopg.connect(database_url) as conn:
        found = conn.execute("SELECT status, attempts FROM alert_deliveries WHERE id = %s", (delivery_id,)).fetchone()
    assert found is not None
    return found[0], found[1]


def test_a_job_enqueued_like_the_spec_example_is_delivered_by_a_real_worker(
    worker_env: dict[str, str], smtp_sink: SmtpSink, database_url: str
) -> None:
    """Queue("alerts").enqueue(execute_delivery_job, "delivery-1", "email", ...) with no prior row."""
    conn = redis.Redis.from_url(worker_env["REDIS_URL"])
    Queue("alerts", connection=conn).enqueue(
        execute_delivery_job, "delivery-1", "email", "ops@example.com", "Disk full", "db-1 at 99%"
    )
    rq_burst(["alerts"], worker_env)
    [accepted] = smtp_sink.accepted
    assert accepted.rcpt_tos == ["ops@example.com"]
    assert accepted.message["Message-ID"] == f"<{message_id_local_part('delivery-1')}@example.org>"
    assert _row(database_url, "delivery-1") == ("delivered", 1)


def test_a_transient_smtp_failure_is_retried_through_the_scheduler_then_delivered(
    worker_env: dict[str, str], smtp_sink: SmtpSink, database_url: str
) -> None:
    """The server answers 451 once; RQ's scheduler brings the job back; attempts == 2 in the row."""
    env = {**worker_env, "ALERT_RETRY_DELAYS": "1"}
    smtp_sink.data_replies.append("451 4.3.0 try again later")
    conn = redis.Redis.from_url(env["REDIS_URL"])
    Queue("alerts", connection=conn).enqueue(execute_delivery_job, "retry-e2e", "email", "ops@example.com", "s", "b")

    rq_burst(["alerts"], env)
    assert _row(database_url, "retry-e2e") == ("pending", 1)
    assert smtp_sink.accepted == [] and smtp_sink.data_calls == 1
    registry = ScheduledJobRegistry(queue=Queue("alerts", connection=conn))
    [job_id] = registry.get_job_ids()
    due = registry.get_scheduled_time(job_id)
    wait_until(lambda: datetime.now(UTC) >= due, timeout=10, what="the retry to become due")

    rq_burst(["alerts"], env)  # a burst worker with the scheduler enqueues due jobs at start-up
    assert _row(database_url, "retry-e2e") == ("delivered", 2)
    [accepted] = smtp_sink.accepted
    expected = f"<{message_id_local_part('retry-e2e')}@example.org>"
    assert accepted.message["Message-ID"] == expected, "the same Message-ID on every attempt"
