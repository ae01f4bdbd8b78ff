"""``execute_delivery_job`` in process, on the real PostgreSQL, Redis and a loopback SMTP server."""

from __future__ import annotations

import psycopg
import pytest
import redis
from rq import Queue
from rq.registry import ScheduledJobRegistry

from alert_worker import execute_delivery_job
from alert_worker.channels.email import message_id_local_part
from tests.support.smtp import SmtpSink


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str]) -> None:
    for key, value in worker_env.items():
        monkeypatch.setenv(key, value)


def _row(database_url: str, delivery_id: str) -> tuple[object, ...]:
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT status, attempts, recipient, recipient_hash, payload, next_attempt_at, error_message "
            "FROM alert_deliveries WHERE id = %s",
            (delivery_id,),
        ).fetchone()
    assert found is not None
    return tuple(found)


def test_the_spec_example_with_no_prior_row_delivers_once(smtp_sink: SmtpSink, database_url: str) -> None:
    """enqueue(execute_delivery_job, "delivery-1", "email", ...) with no row: created, sent, recorded."""
    result = execute_delivery_job("delivery-1", "email", "ops@example.com", "Disk full", "db-1 at 99%")
    assert result["outcome"] == "delivered"
    assert result["message_id"] == f"<{message_id_local_part('delivery-1')}@example.org>"
    [accepted] = smtp_sink.accepted
    assert accepted.rcpt_tos == ["ops@example.com"] and accepted.message["Subject"] == "Disk full"
    status, attempts, recipient, rhash, payload, _, _ = _row(database_url, "delivery-1")
    assert (status, attempts, recipient, payload) == ("delivered", 1, "o***@example.com", None)
    assert isinstance(rhash, str) and len(rhash) == 16

    again = execute_delivery_job("delivery-1", "email", "ops@example.com", "Disk full", "db-1 at 99%")
    assert again["outcome"] == "skipped" and again["success"] is True and again["status"] == "delivered"
    assert len(smtp_sink.accepted) == 1, "a second job for a delivered id sends nothing"


def test_a_subjects_line_breaks_never_reach_a_header(smtp_sink: SmtpSink) -> None:
    """Header injection: CR/LF in the subject collapse to one space."""
    execute_delivery_job("inject-1", "email", "ops@example.com", "Disk full\r\nBcc: victim@example.net", "b")
    [accepted] = smtp_sink.accepted
    assert accepted.rcpt_tos == ["ops@example.com"]
    assert accepted.message["Subject"] == "Disk full Bcc: victim@example.net"
    assert accepted.message["Bcc"] is None


def test_a_transient_smtp_failure_schedules_the_retry_in_rqs_scheduler(
    smtp_sink: SmtpSink, database_url: str, redis_url: str
) -> None:
    """451 once: row pending with next_attempt_at; one scheduled job on the origin queue, not before it."""
    smtp_sink.data_replies.append("451 4.3.0 Mail server temporarily rejected message")
    result = execute_delivery_job("retry-1", "email", "ops@example.com", "Disk full", "b")
    assert result["outcome"] == "retry_scheduled" and result["retryable"] is True
    assert result["error"] is not None and result["error"].startswith("smtp 451 4.3.0")
    status, attempts, _, _, payload, next_at, error = _row(database_url, "retry-1")
    assert (status, attempts) == ("pending", 1) and payload is not None and error == result["error"]
    conn = redis.Redis.from_url(redis_url)
    registry = ScheduledJobRegistry(queue=Queue("alerts", connection=conn))
    [job_id] = registry.get_job_ids()
    assert job_id.startswith("alert-retry-1-retry-")
    assert registry.get_scheduled_time(job_id) >= next_at  # type: ignore[operator]


def test_fifty_jobs_leave_no_connection_behind(smtp_sink: SmtpSink, database_url: str) -> None:
    """Per-job pools are closed: pg_stat_activity for the test database is unchanged after 50 jobs."""
    dbname = database_url.rsplit("/", 1)[1]

    def connections() -> int:
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)
            ).fetchone()
        assert row is not None
        return int(row[0])

    before = connections()
    for n in range(50):
        assert execute_delivery_job(f"leak-{n}", "email", f"u{n}@example.com", "s", "b")["outcome"] == "delivered"
    assert connections() == before
    assert len(smtp_sink.accepted) == 50


def test_the_row_wins_over_the_jobs_arguments(smtp_sink: SmtpSink) -> None:
    """A producer-created row: its recipient and text are sent, whatever the job says."""
    from alert_worker.producer import send_alert

    outcome = send_alert("email", "oncall@example.com", "Stored subject", "stored body", delivery_id="row-wins")
    assert outcome.created
    result = execute_delivery_job("row-wins", "email", "attacker@example.net", "Other", "other")
    assert result["outcome"] == "delivered"
    assert [m.rcpt_tos for m in smtp_sink.accepted] == [["oncall@example.com"]]


def test_with_redis_unreachable_nothing_is_sent_and_the_row_waits_for_the_sweep(
    monkeypatch: pytest.MonkeyPatch, smtp_sink: SmtpSink, database_url: str
) -> None:
    """The limiter fails closed: no send without a rate check; the row is pending for recovery."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("ALERT_SEND_TIMEOUT_SECONDS", "1")
    result = execute_delivery_job("no-redis", "email", "ops@example.com", "s", "b")
    assert result["outcome"] == "retry_scheduled" and result["error"] == "rate_limiter_unavailable"
    assert smtp_sink.data_calls == 0
    status, attempts, *_ = _row(database_url, "no-redis")
    assert (status, attempts) == ("pending", 0)
