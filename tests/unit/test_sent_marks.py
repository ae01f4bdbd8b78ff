"""Sent markers on fakes: an acceptance Postgres could not record is kept in Redis and ends the next claim
as delivered, with no second send (the crash suite's Postgres-outage duplicates)."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest
from structlog.testing import capture_logs

from alert_worker.errors import ClaimLostError
from alert_worker.executor import DeliveryExecutor, DeliveryRequest
from alert_worker.keys import RedisKeys
from alert_worker.models import ChannelType, DeliveryStatus
from alert_worker.ports import SentMarksPort
from alert_worker.retry import RetryPolicy
from alert_worker.sent_marks import (
    SENT_MARK_TTL_SECONDS,
    NoSentMarks,
    SentMark,
    SentMarks,
    sent_mark_ttl,
)
from alert_worker.settings import Settings
from tests.support.fakes import FakeChannel, FakeGauge, FakeLimiter, FakePoisonQueue, FakeStore, RecordingScheduler

KEY = RedisKeys().sent("delivery-1")


class DatabaseGone(Exception):
    """Stands in for psycopg.OperationalError: the executor must treat any exception alike."""


class FlakyStore(FakeStore):
    """A FakeStore whose named writes raise ``fail_with`` the next ``failures`` times they are called."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: dict[str, int] = {}
        self.fail_with: BaseException = DatabaseGone("server closed the connection unexpectedly")

    def _maybe_fail(self, name: str) -> None:
        if self.failing.get(name, 0) > 0:
            self.failing[name] -= 1
            raise self.fail_with

    def mark_delivered(self, delivery_id: str, token: str, *, attempts: int, message_id: str | None) -> float:
        self._maybe_fail("mark_delivered")
        return super().mark_delivered(delivery_id, token, attempts=attempts, message_id=message_id)

    def schedule_retry(self, delivery_id: str, token: str, **kwargs: Any) -> Any:
        self._maybe_fail("schedule_retry")
        return super().schedule_retry(delivery_id, token, **kwargs)

    def poison(self, delivery_id: str, token: str, *, attempts: int, error: str) -> None:
        self._maybe_fail("poison")
        super().poison(delivery_id, token, attempts=attempts, error=error)


class Harness:
    def __init__(self, *, max_attempts: int = 5) -> None:
        self.server = fakeredis.FakeServer()
        self.redis = fakeredis.FakeRedis(server=self.server)
        self.store = FlakyStore()
        self.channel = FakeChannel()
        self.limiter = FakeLimiter()
        self.marks = SentMarks(client=self.redis, clock=lambda: 1_700_000_000.0)
        self.executor = DeliveryExecutor(
            store=self.store,
            poison_queue=FakePoisonQueue(self.store, FakeGauge()),
            limiter=self.limiter,
            channel_factory=lambda _: self.channel,
            scheduler=RecordingScheduler(),
            retry_policy=RetryPolicy(max_attempts=max_attempts, delays=(5.0,), max_retry_delay_seconds=60.0),
            rate_limits=Settings(database_url="", redis_url="").rate_limits,
            queue_depth=FakeGauge(),
            hash_secret="secret",
            rand=lambda: 0.5,
            sent_marks=self.marks,
        )

    def run(self, attempt: int = 0) -> dict[str, Any]:
        request = DeliveryRequest(
            delivery_id="delivery-1",
            channel=ChannelType.EMAIL,
            recipient="ops@example.com",
            subject="Disk full",
            body="db-1 at 99%",
            attempt=attempt,
            queue="alerts",
            job_id=None,
        )
        return dict(self.executor.run(request))

    def fail_after_send(self) -> str:
        """One run whose send is accepted and whose ``delivered`` write fails; returns the message id sent."""
        self.store.failing["mark_delivered"] = 1
        with pytest.raises(DatabaseGone):
            self.run()
        [sent] = self.channel.sent
        return f"<{sent.delivery_id}.{sent.attempt}@test>"


def test_a_failed_delivered_write_after_an_accepted_send_leaves_a_marker_and_still_raises() -> None:
    """The job fails loudly as before, and Redis now holds the provider's message id and the time."""
    h = Harness()
    with capture_logs() as logs:
        message_id = h.fail_after_send()
    raw = h.redis.get(KEY)
    assert raw is not None
    assert json.loads(raw) == {"message_id": message_id, "sent_at": 1_700_000_000.0}
    assert 0 < h.redis.ttl(KEY) <= SENT_MARK_TTL_SECONDS
    [recorded] = [e for e in logs if e["event"] == "sent_marker_recorded"]
    assert recorded["delivery_id"] == "delivery-1" and recorded["message_id"] == message_id


def test_the_marker_is_in_redis_before_the_delivered_write_starts() -> None:
    """A ``delivered`` write that hangs on a silent network never returns, so nothing after it runs: the
    acceptance must already be kept when the write begins (docs/contract.md §7.3)."""
    h = Harness()
    seen_during_write: list[int] = []
    write = h.store.mark_delivered

    def watching(delivery_id: str, token: str, *, attempts: int, message_id: str | None) -> float:
        seen_during_write.append(int(h.redis.exists(KEY)))
        return write(delivery_id, token, attempts=attempts, message_id=message_id)

    h.store.mark_delivered = watching  # type: ignore[method-assign]
    with capture_logs() as logs:
        result = h.run()
    assert seen_during_write == [1]
    assert result["outcome"] == "delivered"
    assert h.redis.exists(KEY) == 0, "deleted once the row says delivered"
    assert "sent_marker_recorded" not in [e["event"] for e in logs], "only a write that failed is worth a warning"


def test_a_lost_claim_on_the_delivered_write_leaves_a_marker_for_the_job_that_took_over() -> None:
    """Any exception counts: a ClaimLostError means another job holds the row and will read the marker."""
    h = Harness()
    h.store.failing["mark_delivered"] = 1
    h.store.fail_with = ClaimLostError("claim on delivery 'delivery-1' was lost")
    result = h.run()
    assert result["outcome"] == "skipped" and result["error"] == "claim_lost"
    assert h.redis.exists(KEY) == 1


def test_the_next_claim_finds_the_marker_and_records_delivered_without_sending() -> None:
    """The retry the hand-back scheduled: delivered with the first message id, no send, no slot, marker gone."""
    h = Harness()
    first_id = h.fail_after_send()
    assert h.store.get("delivery-1").status is DeliveryStatus.PENDING  # type: ignore[union-attr]
    h.store.clock.advance(10)
    with capture_logs() as logs:
        result = h.run(attempt=1)
    assert result["outcome"] == "delivered" and result["message_id"] == first_id
    assert len(h.channel.sent) == 1, "the provider already has it: nothing is sent again"
    assert len(h.limiter.calls) == 1, "only the first run took a rate-limit slot"
    row = h.store.rows["delivery-1"]
    assert (row.row.status, row.row.attempts, row.message_id) == (DeliveryStatus.DELIVERED, 1, first_id)
    assert h.redis.exists(KEY) == 0
    [found] = [e for e in logs if e["event"] == "delivery_found_already_sent"]
    assert found["source"] == "sent_marker" and found["message_id"] == first_id


def test_after_a_postgres_outage_the_stuck_reclaim_ends_delivered_counting_only_the_sending_attempt() -> None:
    """The hand-back cannot write either: the row stays in_progress; the reclaim (attempts+1) adds no other."""
    h = Harness()
    h.store.failing["schedule_retry"] = 1
    first_id = h.fail_after_send()
    assert h.store.rows["delivery-1"].row.status is DeliveryStatus.IN_PROGRESS
    h.store.clock.advance(901)  # past stuck_after_seconds
    result = h.run()
    assert result["outcome"] == "delivered" and result["message_id"] == first_id
    assert len(h.channel.sent) == 1
    assert h.store.rows["delivery-1"].row.attempts == 1


def test_a_delivery_sent_on_its_last_attempt_ends_delivered_not_exhausted() -> None:
    """The marker is read before the attempts check, so a reclaim at max_attempts is not poisoned."""
    h = Harness(max_attempts=1)
    h.store.failing.update(mark_delivered=1, poison=1)  # Postgres gone: the hand-back's poison fails too
    with pytest.raises(DatabaseGone):
        h.run()
    h.store.clock.advance(901)
    result = h.run()
    assert result["outcome"] == "delivered"
    assert len(h.channel.sent) == 1
    assert h.store.rows["delivery-1"].row.status is DeliveryStatus.DELIVERED


def test_when_redis_cannot_be_read_for_the_marker_the_delivery_is_sent_as_before() -> None:
    """Unknown is treated as not sent: the remaining bound, logged as sent_marker_unreadable."""
    h = Harness()
    h.server.connected = False  # every command raises redis.ConnectionError
    with capture_logs() as logs:
        result = h.run()
    assert result["outcome"] == "delivered"
    assert len(h.channel.sent) == 1
    assert "sent_marker_unreadable" in [e["event"] for e in logs]


def test_when_redis_cannot_take_the_marker_the_original_error_is_raised() -> None:
    """Writing the marker never raises past the executor: the database error is what RQ records."""
    h = Harness()
    h.server.connected = False
    with capture_logs() as logs:
        h.fail_after_send()
    [failed] = [e for e in logs if e["event"] == "sent_marker_failed"]
    assert failed["error"] == "ConnectionError" and failed["delivery_id"] == "delivery-1"


def test_a_marker_whose_value_cannot_be_read_still_means_sent() -> None:
    """The key's existence is the fact that matters; an unreadable value gives no message id."""
    client = fakeredis.FakeRedis()
    client.set(KEY, b"\xff not json")
    with capture_logs():
        found = SentMarks(client=client).find("delivery-1", log=_Log())
    assert found == SentMark(message_id=None, sent_at=None)


def test_clearing_a_marker_with_redis_down_is_logged_not_raised() -> None:
    """The row already says delivered; a leftover marker only expires."""
    server = fakeredis.FakeServer()
    server.connected = False
    log = _Log()
    SentMarks(client=fakeredis.FakeRedis(server=server)).clear("delivery-1", log=log)
    assert log.events == ["sent_marker_not_cleared"]


@pytest.mark.parametrize(
    ("delivery_id", "expected"),
    [
        ("delivery-1", "alert:sent:delivery-1"),
        ("a b/c", "alert:sent:#"),
        ("x" * 81, "alert:sent:#"),
    ],
    ids=["plain-id-verbatim", "other-characters-hashed", "too-long-hashed"],
)
def test_the_marker_key_is_readable_for_plain_ids_and_hashed_otherwise(delivery_id: str, expected: str) -> None:
    """Like RQ job ids: ``[A-Za-z0-9_-]{1,80}`` as is, anything else as ``#`` + 32 hex of SHA-256."""
    key = RedisKeys().sent(delivery_id)
    assert key.startswith(expected)
    if expected.endswith("#"):
        assert len(key) == len(expected) + 32


def test_the_marker_outlives_every_way_back_to_a_claim_the_settings_allow() -> None:
    """A week at least, and twice stuck + deferral budget + longest retry delay when those are longer."""
    assert sent_mark_ttl(Settings(database_url="", redis_url="")) == SENT_MARK_TTL_SECONDS
    long = Settings(database_url="", redis_url="", max_defer_seconds=7 * 24 * 3600.0)
    assert sent_mark_ttl(long) > long.stuck_after_seconds + long.max_defer_seconds + long.max_retry_delay_seconds


def test_the_null_sent_marks_keep_nothing_and_fit_the_executors_seam() -> None:
    """The default for executors built on fakes: nothing recorded, nothing found."""
    marks: SentMarksPort = NoSentMarks()
    marks.record("delivery-1", "<m@x>", log=_Log())
    assert marks.find("delivery-1", log=_Log()) is None


class _Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def error(self, event: str, **_: Any) -> None:
        self.events.append(event)

    warning = info = error
