"""Sent markers on the real PostgreSQL, Redis and the loopback SMTP sink: an e-mail the server accepted
while the ``delivered`` write failed is not sent again by the next job."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import redis

from alert_worker.entrypoint import build_executor, job_request, run_delivery_job
from alert_worker.executor import DeliveryExecutor
from alert_worker.keys import RedisKeys
from alert_worker.resources import JobResources
from alert_worker.settings import Settings
from tests.support.smtp import SmtpSink

ARGS = ("email", "ops@example.com", "Disk full", "db-1 at 99%")


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str]) -> None:
    for key, value in worker_env.items():
        monkeypatch.setenv(key, value)


def _outage(*writes: str) -> Callable[[Settings, JobResources], DeliveryExecutor]:
    """The production executor, whose named store writes fail like a Postgres that just went away."""

    def make(settings: Settings, resources: JobResources) -> DeliveryExecutor:
        executor = build_executor(settings, resources)

        def gone(*_: Any, **__: Any) -> Any:
            raise psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly")

        for name in writes:
            setattr(executor.store, name, gone)
        return executor

    return make


def _run(delivery_id: str, make: Callable[[Settings, JobResources], DeliveryExecutor] = build_executor) -> Any:
    settings, request = job_request(delivery_id, *ARGS, 0)
    return run_delivery_job(request, settings=settings, make_executor=make)


def _row(database_url: str, delivery_id: str) -> tuple[Any, ...]:
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT status, attempts, provider_message_id FROM alert_deliveries WHERE id = %s", (delivery_id,)
        ).fetchone()
    assert found is not None
    return tuple(found)


def _age(database_url: str, delivery_id: str, column: str) -> None:
    """Move the row's clock back an hour: the stuck threshold or the retry delay has passed."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            f"UPDATE alert_deliveries SET {column} = now() - interval '1 hour' WHERE id = %s",
            (delivery_id,),
        )


def test_an_outage_after_the_smtp_acceptance_ends_delivered_with_one_message(
    smtp_sink: SmtpSink, database_url: str, redis_client: redis.Redis
) -> None:
    """delivered and the hand-back both fail: the row stays in_progress; the stuck reclaim finds the marker."""
    with pytest.raises(psycopg.OperationalError):
        _run("sm-outage", _outage("mark_delivered", "schedule_retry"))
    [accepted] = smtp_sink.accepted
    first_id = accepted.message["Message-ID"]
    assert _row(database_url, "sm-outage")[0] == "in_progress"
    key = RedisKeys().sent("sm-outage")
    assert redis_client.ttl(key) > 6 * 24 * 3600

    _age(database_url, "sm-outage", "last_attempt_at")
    result = _run("sm-outage")
    assert result["outcome"] == "delivered" and result["message_id"] == first_id
    assert len(smtp_sink.accepted) == 1, "the SMTP server got the alert once"
    assert _row(database_url, "sm-outage") == ("delivered", 1, first_id)
    assert redis_client.exists(key) == 0


def test_a_blip_on_the_delivered_write_is_retried_from_the_marker_without_a_second_message(
    smtp_sink: SmtpSink, database_url: str, redis_client: redis.Redis
) -> None:
    """Only the delivered write fails: the hand-back schedules a retry, and the retry sends nothing."""
    with pytest.raises(psycopg.OperationalError):
        _run("sm-blip", _outage("mark_delivered"))
    assert _row(database_url, "sm-blip")[:2] == ("pending", 1)

    _age(database_url, "sm-blip", "next_attempt_at")
    result = _run("sm-blip")
    assert result["outcome"] == "delivered"
    assert len(smtp_sink.accepted) == 1
    assert _row(database_url, "sm-blip") == ("delivered", 1, smtp_sink.accepted[0].message["Message-ID"])
    assert redis_client.exists(RedisKeys().sent("sm-blip")) == 0


def test_without_a_marker_the_reclaimed_delivery_is_sent_again(
    smtp_sink: SmtpSink, database_url: str, redis_client: redis.Redis
) -> None:
    """The remaining bound (Redis lost the marker, or the worker died before writing it): a second message."""
    with pytest.raises(psycopg.OperationalError):
        _run("sm-lost", _outage("mark_delivered", "schedule_retry"))
    assert redis_client.delete(RedisKeys().sent("sm-lost")) == 1
    _age(database_url, "sm-lost", "last_attempt_at")
    assert _run("sm-lost")["outcome"] == "delivered"
    assert len(smtp_sink.accepted) == 2
