"""The executor's whole state table, on fakes: every outcome, what is written and what is scheduled."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from alert_worker.channels.base import DisabledChannel
from alert_worker.errors import ConfigurationError, PermanentDeliveryError, TransientDeliveryError
from alert_worker.executor import DeliveryExecutor, DeliveryRequest
from alert_worker.models import ChannelType, DeliveryRow, DeliveryStatus
from alert_worker.rate_limit import RateDecision
from alert_worker.retry import RetryPolicy
from alert_worker.settings import Settings
from tests.support.contract import RESULT_KEYS
from tests.support.fakes import (
    FakeChannel,
    FakeGauge,
    FakeLimiter,
    FakePoisonQueue,
    FakeStore,
    RecordingScheduler,
    limiter_down,
)


class Harness:
    def __init__(self, channel: Any = None, limiter: FakeLimiter | None = None, **policy: Any) -> None:
        self.store = FakeStore()
        self.channel = channel if channel is not None else FakeChannel()
        self.limiter = limiter or FakeLimiter()
        self.scheduler = RecordingScheduler()
        self.poison_gauge = FakeGauge()
        self.depth = FakeGauge()
        self.executor = DeliveryExecutor(
            store=self.store,
            poison_queue=FakePoisonQueue(self.store, self.poison_gauge),
            limiter=self.limiter,
            channel_factory=lambda _: self.channel,
            scheduler=self.scheduler,
            retry_policy=RetryPolicy(
                max_attempts=policy.get("max_attempts", 5),
                delays=policy.get("delays", (5.0, 30.0)),
                max_retry_delay_seconds=policy.get("max_retry_delay", 3600.0),
                rand=lambda: 0.5,
            ),
            rate_limits=Settings(database_url="", redis_url="").rate_limits,
            queue_depth=self.depth,
            hash_secret="secret",
            default_webhook_url=policy.get("default_webhook_url", ""),
            max_defer_seconds=policy.get("max_defer", 3600.0),
            rand=lambda: 0.5,
        )

    def run(self, delivery_id: str = "delivery-1", attempt: int = 0, **args: Any) -> dict[str, Any]:
        request = DeliveryRequest(
            delivery_id=delivery_id,
            channel=ChannelType(args.get("channel", "email")),
            recipient=args.get("recipient", "ops@example.com"),
            subject=args.get("subject", "Disk full"),
            body=args.get("body", "db-1 at 99%"),
            attempt=attempt,
            queue=args.get("queue", "alerts"),
            job_id=args.get("job_id"),
        )
        return dict(self.executor.run(request))

    def row(self, delivery_id: str = "delivery-1") -> DeliveryRow:
        found = self.store.get(delivery_id)
        assert found is not None
        return found


def test_a_fresh_delivery_is_created_claimed_sent_and_recorded_delivered() -> None:
    """No row yet: the job creates it from its own arguments, sends once and records the provider id."""
    h = Harness()
    result = h.run()
    assert set(result) == RESULT_KEYS
    assert all(isinstance(v, (str, bool)) or v is None for v in result.values())
    assert result["outcome"] == "delivered" and result["success"] is True and result["status"] == "delivered"
    assert result["message_id"] == "<delivery-1.0@test>"
    assert result["error"] is None and result["next_attempt_at"] is None
    assert h.row().status is DeliveryStatus.DELIVERED and h.row().attempts == 1
    assert h.row().payload is None, "payload is erased once delivered"
    assert len(h.channel.sent) == 1 and h.channel.closed == 1
    assert h.depth.value == 0, "queue depth: +1 on create, -1 on delivery"


def test_a_transient_failure_schedules_a_retry_with_backoff_without_sleeping() -> None:
    """The row goes back to pending with next_attempt_at; the follow-up goes to the origin queue."""
    h = Harness(FakeChannel(TransientDeliveryError("smtp 451 4.3.0: try later")))
    result = h.run(queue="alerts-high")
    assert result["outcome"] == "retry_scheduled" and result["status"] == "pending"
    assert result["retryable"] is True and result["error"] == "smtp 451 4.3.0: try later"
    row = h.row()
    assert row.status is DeliveryStatus.PENDING and row.attempts == 1
    assert row.next_attempt_at == h.store.clock.now + timedelta(seconds=5.25)  # 5 s + half of 10 % jitter
    assert result["next_attempt_at"] == row.next_attempt_at.isoformat().replace("+00:00", "Z")
    [follow_up] = h.scheduler.scheduled
    assert (follow_up.kind, follow_up.attempt, follow_up.queue) == ("retry", 1, "alerts-high")
    assert follow_up.delay_seconds == pytest.approx(5.25)
    assert follow_up.payload == {"recipient": "ops@example.com", "subject": "Disk full", "body": "db-1 at 99%"}


def test_a_retry_after_longer_than_the_backoff_wins() -> None:
    """A provider's Retry-After is a floor for the delay."""
    h = Harness(FakeChannel(TransientDeliveryError("slack 429", retry_after=120.0)))
    h.run()
    assert h.scheduler.scheduled[0].delay_seconds == 120.0
    assert h.row().next_attempt_at == h.store.clock.now + timedelta(seconds=120)


def test_a_retry_after_beyond_the_maximum_poisons_instead_of_sending_early() -> None:
    """Retry-After > ALERT_MAX_RETRY_DELAY: parked as retry_after_too_long, nothing scheduled."""
    h = Harness(FakeChannel(TransientDeliveryError("slack 429", retry_after=7200.0)), max_retry_delay=3600.0)
    result = h.run()
    assert result["outcome"] == "poisoned" and result["error"].startswith("retry_after_too_long")
    assert h.scheduler.scheduled == []
    assert h.row().status is DeliveryStatus.POISON


def test_a_permanent_failure_is_poisoned_at_once() -> None:
    """No retry for a permanent error; the poison gauge grows and the payload stays for a replay."""
    h = Harness(FakeChannel(PermanentDeliveryError("smtp recipient refused 550 5.1.1: no such user")))
    result = h.run()
    assert result["outcome"] == "poisoned" and result["status"] == "poison" and result["retryable"] is False
    assert result["error"] == "smtp recipient refused 550 5.1.1: no such user"
    assert h.row().attempts == 1 and h.row().payload is not None
    assert h.poison_gauge.value == 1 and h.depth.value == 0
    assert h.scheduler.scheduled == []


def test_a_transient_failure_on_the_last_attempt_poisons() -> None:
    """Attempt 5 of 5 fails transiently: attempts_exhausted, marked retryable for the operator."""
    h = Harness(FakeChannel(TransientDeliveryError("smtp_timeout")), max_attempts=5)
    result = h.run(attempt=4)
    assert result["outcome"] == "poisoned" and result["retryable"] is True
    assert result["error"] == "attempts_exhausted: smtp_timeout"
    assert h.row().attempts == 5
    assert h.scheduler.scheduled == []


def test_a_job_whose_attempts_are_already_used_up_sends_nothing() -> None:
    """attempt >= ALERT_MAX_ATTEMPTS: poisoned without a send."""
    h = Harness(max_attempts=3)
    result = h.run(attempt=3)
    assert result["outcome"] == "poisoned" and result["error"] == "attempts_exhausted"
    assert h.channel.sent == []


def test_the_effective_attempt_count_is_the_larger_of_job_and_row() -> None:
    """max(attempt, row.attempts): a stale job argument cannot reset the count."""
    h = Harness(FakeChannel(TransientDeliveryError("smtp_timeout")))
    h.store.add(_pending_row(attempts=2))
    h.run(attempt=0)
    assert h.channel.sent[0].attempt == 2
    assert h.row().attempts == 3


def test_a_rate_limited_delivery_is_deferred_without_using_an_attempt() -> None:
    """Denied: back to pending until the limit frees (plus jitter), deferrals +1, attempts unchanged."""
    h = Harness(limiter=FakeLimiter(RateDecision(allowed=False, wait_seconds=20.0, limit_name="recipient")))
    result = h.run()
    assert result["outcome"] == "retry_scheduled" and result["error"] == "rate_limited: recipient limit"
    row = h.row()
    assert (row.attempts, row.deferrals) == (0, 1)
    assert row.deferred_since == h.store.clock.now
    assert h.channel.sent == []
    [follow_up] = h.scheduler.scheduled
    assert follow_up.kind == "defer" and follow_up.delay_seconds == pytest.approx(20.0 + 0.5 * 2.0)


def test_deferral_past_the_maximum_poisons_as_rate_limited_too_long() -> None:
    """Deferred since 3590 s and the limit frees in 20 s: past ALERT_MAX_DEFER_SECONDS=3600."""
    h = Harness(
        limiter=FakeLimiter(RateDecision(allowed=False, wait_seconds=20.0, limit_name="channel")), max_defer=3600.0
    )
    h.store.add(_pending_row(deferrals=40, deferred_since=h.store.clock.now - timedelta(seconds=3590)))
    result = h.run()
    assert result["outcome"] == "poisoned" and result["error"] == "rate_limited_too_long: channel limit"
    assert h.scheduler.scheduled == []


def test_a_channel_without_settings_poisons_with_channel_not_configured() -> None:
    """SMS without Twilio settings: parked, never sent, no rate-limit slot taken."""
    h = Harness(DisabledChannel(ChannelType.SMS, ("TWILIO_AUTH_TOKEN",)))
    result = h.run(channel="sms", recipient="+15551234567")
    assert result["outcome"] == "poisoned" and result["error"] == "channel_not_configured: sms"
    assert h.limiter.calls == []


@pytest.mark.parametrize(
    ("status", "outcome_status", "success"),
    [
        (DeliveryStatus.DELIVERED, "delivered", True),
        (DeliveryStatus.FAILED, "failed", False),
        (DeliveryStatus.POISON, "poison", False),
        (DeliveryStatus.IN_PROGRESS, "in_progress", False),
    ],
    ids=["already-delivered", "resolved-failed", "poisoned", "in-progress-elsewhere"],
)
def test_a_row_that_is_not_claimable_is_skipped_and_nothing_is_sent(
    status: DeliveryStatus, outcome_status: str, success: bool
) -> None:
    """Only the claimer sends: terminal rows and fresh claims held by another job are skipped."""
    h = Harness()
    h.store.add(_pending_row(status=status), last_attempt_at=h.store.clock.now)
    result = h.run()
    assert result["outcome"] == "skipped" and result["status"] == outcome_status and result["success"] is success
    assert h.channel.sent == [] and h.limiter.calls == []


def test_a_pending_row_not_yet_due_is_skipped_with_its_due_time() -> None:
    """A job that runs before next_attempt_at does nothing (RQ may fire early)."""
    h = Harness()
    h.store.add(_pending_row(next_attempt_at=h.store.clock.now + timedelta(seconds=30)))
    result = h.run()
    assert result["outcome"] == "skipped" and result["status"] == "pending"
    assert result["next_attempt_at"] is not None
    assert h.channel.sent == []


def test_a_stuck_claim_is_taken_over_and_the_lost_attempt_counted() -> None:
    """in_progress with a claim older than ALERT_STUCK_AFTER_SECONDS is reclaimed; attempts +1."""
    h = Harness()
    h.store.add(_pending_row(status=DeliveryStatus.IN_PROGRESS), last_attempt_at=h.store.clock.now)
    h.store.clock.advance(901)
    result = h.run()
    assert result["outcome"] == "delivered"
    assert h.row().attempts == 2


def test_if_the_rate_limiter_cannot_be_asked_nothing_is_sent_and_the_row_is_left_for_the_sweep() -> None:
    """Fail closed: released to pending without an attempt; no RQ job (the sweep recovers it)."""
    h = Harness(limiter=FakeLimiter(limiter_down()))
    result = h.run()
    assert result["outcome"] == "retry_scheduled" and result["error"] == "rate_limiter_unavailable"
    assert h.row().status is DeliveryStatus.PENDING and h.row().attempts == 0
    assert h.channel.sent == [] and h.scheduler.scheduled == []


def test_a_failing_retry_enqueue_does_not_fail_the_job_because_the_row_is_safe() -> None:
    """Redis down at enqueue_in: the row is pending with next_attempt_at; the sweep will find it."""
    h = Harness(FakeChannel(TransientDeliveryError("smtp_timeout")))
    h.scheduler.fail = True
    with capture_logs() as logs:
        result = h.run()
    assert result["outcome"] == "retry_scheduled"
    assert h.row().status is DeliveryStatus.PENDING and h.row().next_attempt_at is not None
    assert any(e["event"] == "follow_up_enqueue_failed" for e in logs)


def test_a_claim_lost_before_the_write_is_reported_as_skipped_without_overwriting() -> None:
    """Fencing: another job reclaimed the row; this job writes nothing."""
    h = Harness()
    h.store.steal_claim_on_write = True
    with capture_logs() as logs:
        result = h.run()
    assert result["outcome"] == "skipped" and result["error"] == "claim_lost"
    assert h.row().status is DeliveryStatus.IN_PROGRESS
    assert any(e["event"] == "delivery_claim_lost" for e in logs)


def test_the_stored_row_wins_over_the_jobs_arguments_and_the_mismatch_is_logged() -> None:
    """A producer-recorded payload is what gets sent."""
    h = Harness()
    h.store.add(_pending_row(payload={"recipient": "oncall@example.com", "subject": "Stored", "body": "stored"}))
    with capture_logs() as logs:
        h.run(recipient="someone-else@example.com", subject="Job", body="job")
    assert h.channel.sent[0].recipient == "oncall@example.com" and h.channel.sent[0].subject == "Stored"
    assert any(e["event"] == "delivery_arguments_mismatch" for e in logs)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ({"subject": "", "body": "  "}, "invalid_input: neither subject nor body"),
        ({"subject": 42}, "invalid_input: subject must be a string, got int"),
        ({"body": "bad \ud800 surrogate"}, "invalid_input: body contains lone surrogates"),
        ({"body": "bell \x07"}, "invalid_input: body contains control character U+0007"),
        ({"body": "nul \x00"}, "invalid_input: body contains control character U+0000"),
        ({"body": "x" * 1_000_001}, "invalid_input: body is larger than 1000000 bytes"),
        ({"recipient": ""}, "invalid_recipient: expected one e-mail address"),
    ],
    ids=[
        "nothing-to-say",
        "non-string-subject",
        "lone-surrogate",
        "control-character",
        "nul",
        "body-over-1MB",
        "empty-recipient",
    ],
)
def test_bad_input_is_poisoned_with_a_clear_reason_and_never_sent(args: dict[str, Any], reason: str) -> None:
    """Every bad argument other than id/channel/attempt ends as a poisoned row, not a crash."""
    h = Harness()
    result = h.run(**args)
    assert result["outcome"] == "poisoned" and result["error"] == reason
    assert h.channel.sent == [] and h.limiter.calls == []


def test_delivery_logs_carry_the_recipient_hash_and_never_the_recipient_or_body() -> None:
    """Structured events: delivery_id, channel, attempt, recipient_hash on every one."""
    h = Harness()
    with capture_logs() as logs:
        h.run(recipient="secret.person@example.com", body="the-body-canary")
    events = [e for e in logs if e["event"].startswith("delivery_")]
    assert [e["event"] for e in events] == ["delivery_claimed", "delivery_attempt", "delivery_delivered"]
    for event in events:
        assert {"delivery_id", "channel", "attempt", "recipient_hash"} <= set(event)
        assert "secret.person" not in repr(event) and "the-body-canary" not in repr(event)


def _pending_row(
    *,
    status: DeliveryStatus = DeliveryStatus.PENDING,
    attempts: int = 0,
    deferrals: int = 0,
    deferred_since: Any = None,
    next_attempt_at: Any = None,
    payload: dict[str, str] | None = None,
) -> DeliveryRow:
    return DeliveryRow(
        id="delivery-1",
        channel="email",
        status=status,
        attempts=attempts,
        deferrals=deferrals,
        recipient_hash="abc",
        payload=payload or {"recipient": "ops@example.com", "subject": "s", "body": "b"},
        queue="alerts",
        deferred_since=deferred_since,
        next_attempt_at=next_attempt_at,
        claim_token=None,
    )


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ConfigurationError("TWILIO_FROM_NUMBER must be an E.164 number"), "channel_not_configured: email"),
        (
            PermanentDeliveryError("channel_not_configured: email (ALERTS_FROM_EMAIL invalid)"),
            "channel_not_configured: email (ALERTS_FROM_EMAIL invalid)",
        ),
    ],
    ids=["configuration-error", "permanent-error"],
)
def test_a_channel_that_cannot_be_built_poisons_instead_of_leaving_the_row_claimed(
    error: Exception, reason: str
) -> None:
    """A constructor failure must not crash the job with the row stuck in_progress."""
    h = Harness()

    def broken(_: ChannelType) -> Any:
        raise error

    h.executor.channel_factory = broken
    result = h.run()
    assert result["outcome"] == "poisoned" and result["error"] == reason
    assert h.row().status is DeliveryStatus.POISON


@pytest.mark.parametrize(
    ("existing", "errors", "calls"),
    [
        (False, (), []),
        (False, (TransientDeliveryError("smtp_timeout"),), [1]),
        (True, (), [-1]),
        (True, (PermanentDeliveryError("smtp 550"),), [-1]),
        (True, (TransientDeliveryError("smtp_timeout"),), []),
    ],
    ids=[
        "created-and-delivered",
        "created-and-retrying",
        "existing-delivered",
        "existing-poisoned",
        "existing-retrying",
    ],
)
def test_the_queue_depth_gauge_moves_once_per_job_by_the_net_change(
    existing: bool, errors: tuple[Any, ...], calls: list[int]
) -> None:
    """+1 for a created row, -1 for an ended one, in one Redis call; none when they cancel out."""
    h = Harness(FakeChannel(*errors))
    if existing:
        h.store.add(_pending_row())
    h.run()
    assert h.depth.calls == calls


class ExplodingChannel(FakeChannel):
    def send(self, message: Any) -> Any:
        raise RuntimeError("a bug in a channel")


class ExplodingPrepare(FakeChannel):
    def prepare(self, message: Any) -> Any:
        raise RuntimeError("a bug in a channel")


def test_an_unexpected_error_after_the_claim_is_retried_with_the_attempt_counted_and_re_raised() -> None:
    """The job fails loudly, but the row is not left claimed for ALERT_STUCK_AFTER_SECONDS."""
    h = Harness(ExplodingPrepare())
    with capture_logs() as logs, pytest.raises(RuntimeError, match="a bug in a channel"):
        h.run()
    row = h.row()
    assert row.status is DeliveryStatus.PENDING and row.attempts == 1 and row.next_attempt_at is not None
    assert h.store.rows["delivery-1"].error == "worker_error: RuntimeError"
    assert [f.kind for f in h.scheduler.scheduled] == ["retry"]
    assert any(e["event"] == "delivery_crashed" for e in logs)


def test_an_unexpected_error_inside_the_send_is_an_unknown_outcome_retried_and_re_raised() -> None:
    """The request may have gone out (§7.1): ``outcome_unknown:``, written once, and the job still fails."""
    h = Harness(ExplodingChannel())
    with capture_logs() as logs, pytest.raises(RuntimeError, match="a bug in a channel"):
        h.run()
    row = h.row()
    assert row.status is DeliveryStatus.PENDING and row.attempts == 1 and row.next_attempt_at is not None
    assert h.store.rows["delivery-1"].error == "outcome_unknown: send interrupted: RuntimeError"
    assert [f.kind for f in h.scheduler.scheduled] == ["retry"]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["delivery_send_interrupted"]


def test_an_unexpected_error_on_the_last_attempt_poisons_and_is_re_raised() -> None:
    h = Harness(ExplodingChannel(), max_attempts=2)
    with pytest.raises(RuntimeError):
        h.run(attempt=1)
    assert h.row().status is DeliveryStatus.POISON
    assert h.store.rows["delivery-1"].error == "attempts_exhausted: outcome_unknown: send interrupted: RuntimeError"


def test_if_the_crash_cannot_be_recorded_the_original_error_still_propagates() -> None:
    """Database gone too: the row stays claimed for the stuck reclaim; the first error is raised."""
    h = Harness(ExplodingChannel())
    h.store.steal_claim_on_write = True
    with pytest.raises(RuntimeError, match="a bug in a channel"):
        h.run()
    assert h.row().status is DeliveryStatus.IN_PROGRESS
