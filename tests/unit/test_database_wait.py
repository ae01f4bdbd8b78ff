"""The copy a job schedules when Postgres is unreachable before its claim (docs/contract.md §6.3)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import fakeredis
import pytest
from rq import Queue
from rq.registry import ScheduledJobRegistry

from alert_worker.executor import DeliveryRequest
from alert_worker.job import DB_WAIT_META, defer_while_database_unreachable
from alert_worker.models import ChannelType
from alert_worker.rq_jobs import RqEnqueuer
from alert_worker.settings import Settings

NOW = 1_800_000_000.0
REQUEST = DeliveryRequest(
    delivery_id="d-1", channel=ChannelType.SMS, recipient="+15550001111", subject="", body="up", attempt=2
)


@pytest.fixture
def client() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield client
    client.close()


def _settings(**env: str) -> Settings:
    return Settings.from_env({"ALERT_RETRY_DELAYS": "5,30", "ALERT_MAX_DEFER_SECONDS": "100", **env})


def _copy(client: fakeredis.FakeRedis, meta: dict[str, object], now: float = NOW) -> bool:
    enqueuer = RqEnqueuer(connection=client, clock=lambda: now)
    return defer_while_database_unreachable(
        REQUEST, settings=_settings(), meta=meta, enqueuer=enqueuer, clock=lambda: now
    )


def test_the_first_copy_waits_the_first_retry_delay_and_keeps_the_attempt(client: fakeredis.FakeRedis) -> None:
    """Same arguments (attempt 2, not 3), an id from the first failure's time, that time in its meta."""
    assert _copy(client, {})
    [job_id] = ScheduledJobRegistry("alerts", connection=client).get_job_ids()
    assert job_id == f"alert-d-1-dbwait-{int(NOW * 1000)}-1"
    job = Queue("alerts", connection=client).fetch_job(job_id)
    assert job is not None and job.kwargs == {"attempt": 2}
    assert job.meta[DB_WAIT_META] == {"since": NOW, "copies": 1}
    [(_, score)] = client.zrange(ScheduledJobRegistry("alerts", connection=client).key, 0, -1, withscores=True)
    assert 4 <= score - time.time() <= 7, "RQ schedules from its own clock: about 5 s from now"


def test_later_copies_follow_the_retry_delays_and_keep_the_first_failure_time(client: fakeredis.FakeRedis) -> None:
    """The third copy waits the last delay (30 s); its id numbers it, so it never collides with the second."""
    assert _copy(client, {DB_WAIT_META: {"since": NOW - 40, "copies": 2}})
    [job_id] = ScheduledJobRegistry("alerts", connection=client).get_job_ids()
    assert job_id == f"alert-d-1-dbwait-{int((NOW - 40) * 1000)}-3"
    [(_, score)] = client.zrange(ScheduledJobRegistry("alerts", connection=client).key, 0, -1, withscores=True)
    assert 29 <= score - time.time() <= 32


def test_no_copy_once_the_wait_would_pass_alert_max_defer_seconds(client: fakeredis.FakeRedis) -> None:
    """80 s waited + 30 s more > 100 s: the job gives up (RQ keeps the failed job for an operator)."""
    assert not _copy(client, {DB_WAIT_META: {"since": NOW - 80, "copies": 4}})
    assert ScheduledJobRegistry("alerts", connection=client).get_job_ids() == []


def test_the_same_copy_is_scheduled_once(client: fakeredis.FakeRedis) -> None:
    """Running the same failed job twice (an RQ retry) schedules one copy: the id is deterministic."""
    meta = {DB_WAIT_META: {"since": NOW - 10, "copies": 1}}
    assert _copy(client, meta)
    _copy(client, meta)
    assert len(ScheduledJobRegistry("alerts", connection=client).get_job_ids()) == 1
