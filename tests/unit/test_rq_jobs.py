"""RQ wiring: valid deterministic job ids, a schedule that never fires early, neutral job options."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rq import Queue
from rq.job import JOB_ID_PATTERN
from rq.registry import ScheduledJobRegistry

from alert_worker.executor import FollowUp
from alert_worker.rq_jobs import FAILURE_TTL_SECONDS, RqEnqueuer, job_id_for, schedule_delay


@pytest.mark.parametrize(
    ("delivery_id", "expected"),
    [("delivery-1", "alert-delivery-1-send"), ("abc_DEF-9", "alert-abc_DEF-9-send")],
    ids=["plain", "mixed"],
)
def test_readable_delivery_ids_stay_readable_in_job_ids(delivery_id: str, expected: str) -> None:
    """Operators can find the RQ job of a delivery by its id."""
    assert job_id_for(delivery_id, "send") == expected


@given(st.text(min_size=1, max_size=255), st.text(max_size=60))
def test_every_delivery_id_maps_to_a_valid_rq_job_id(delivery_id: str, suffix: str) -> None:
    """UUIDs, spaces, colons, unicode: always [A-Za-z0-9_-]+ (RQ rejects anything else)."""
    assert JOB_ID_PATTERN.fullmatch(job_id_for(delivery_id, suffix or "x"))


def test_different_ids_that_need_hashing_do_not_collide() -> None:
    assert job_id_for("a:b", "s") != job_id_for("a;b", "s")


@given(st.floats(min_value=0, max_value=4000), st.floats(min_value=1.7e9, max_value=1.8e9))
def test_the_schedule_never_fires_before_the_delay(delay: float, now: float) -> None:
    """RQ truncates to whole seconds and fires once that second has come: round the target up."""
    target = now + schedule_delay(delay, now).total_seconds()
    stored = math.floor(target)  # what RQ keeps
    assert stored >= now + delay - 1e-6
    assert stored - (now + delay) < 1.0 + 1e-6, "and never more than a second late"


def test_follow_ups_are_scheduled_on_the_origin_queue_with_neutral_options() -> None:
    """Description without recipient or body, bounded failure_ttl, job timeout, unique id per claim."""
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    clock_now = datetime(2026, 11, 28, 3, 0, tzinfo=UTC).timestamp()
    enqueuer = RqEnqueuer(connection=conn, job_timeout_seconds=60, clock=lambda: clock_now)
    follow_up = FollowUp(
        delivery_id="delivery-1",
        channel="email",
        payload={"recipient": "ops@example.com", "subject": "Disk full", "body": "secret body"},
        queue="alerts-high",
        attempt=2,
        delay_seconds=30.0,
        kind="retry",
        token="tok-1",
    )
    enqueuer.schedule(follow_up)
    enqueuer.schedule(follow_up)  # the same claim again: still one job
    registry = ScheduledJobRegistry(queue=Queue("alerts-high", connection=conn))
    [job_id] = registry.get_job_ids()
    job = Queue("alerts-high", connection=conn).fetch_job(job_id)
    assert job is not None
    assert job.description == "alert delivery delivery-1"
    assert job.failure_ttl == FAILURE_TTL_SECONDS <= 7 * 24 * 3600
    assert job.timeout == 60
    assert job.func_name == "alert_worker.entrypoint.execute_delivery_job"
    assert job.args == ("delivery-1", "email", "ops@example.com", "Disk full", "secret body")
    assert job.kwargs == {"attempt": 2}
    assert registry.get_scheduled_time(job_id).timestamp() >= clock_now + 30.0


def test_enqueue_now_refuses_a_second_job_with_the_same_suffix() -> None:
    """A sweep or replay stamp enqueues once even if called twice."""
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    enqueuer = RqEnqueuer(connection=conn)
    payload = {"recipient": "ops@example.com", "subject": "s", "body": "b"}
    assert (
        enqueuer.enqueue_now(
            queue="alerts", delivery_id="d-1", channel="email", payload=payload, attempt=0, suffix="replay-1"
        )
        is True
    )
    assert (
        enqueuer.enqueue_now(
            queue="alerts", delivery_id="d-1", channel="email", payload=payload, attempt=0, suffix="replay-1"
        )
        is False
    )
    assert Queue("alerts", connection=conn).count == 1


def test_oldest_queued_at_reads_the_head_of_the_queue() -> None:
    """The sweep's backlog check: None for an empty queue, else the head job's enqueue time (UTC)."""
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    enqueuer = RqEnqueuer(connection=conn)
    assert enqueuer.oldest_queued_at("alerts") is None
    payload = {"recipient": "ops@example.com", "subject": "s", "body": "b"}
    before = datetime.now(UTC)
    enqueuer.enqueue_now(queue="alerts", delivery_id="d-1", channel="email", payload=payload, attempt=0, suffix="a")
    enqueuer.enqueue_now(queue="alerts", delivery_id="d-2", channel="email", payload=payload, attempt=0, suffix="b")
    head = enqueuer.oldest_queued_at("alerts")
    assert head is not None and head.tzinfo is not None
    assert before - timedelta(seconds=1) <= head <= datetime.now(UTC)
    job = Queue("alerts", connection=conn).fetch_job("alert-d-1-a")
    assert job is not None and job.enqueued_at is not None
    assert head == job.enqueued_at.replace(tzinfo=head.tzinfo)
