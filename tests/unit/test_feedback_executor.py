"""Provider feedback in the executor, on fakes: suppression, cooldowns and unknown outcomes (docs/contract.md §6.2)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import fakeredis
import pytest
import requests
from structlog.testing import capture_logs
from urllib3.exceptions import ProtocolError

from alert_worker.cooldown import ChannelPauses, Cooldowns, destination_hash, mask_destination
from alert_worker.errors import (
    ChannelMisconfiguredError,
    DeliveryError,
    OutcomeUnknownError,
    PermanentDeliveryError,
    RecipientRejectedError,
    SlowDownError,
    TransientDeliveryError,
)
from alert_worker.executor import DeliveryExecutor, DeliveryRequest
from alert_worker.feedback import ProviderFeedback
from alert_worker.models import ChannelType, DeliveryStatus, Message
from alert_worker.ports import NullMetrics
from alert_worker.redaction import recipient_hash
from alert_worker.retry import RetryPolicy
from alert_worker.settings import Settings
from tests.support.fakes import FakeChannel, FakeGauge, FakeLimiter, FakePoisonQueue, FakeStore, RecordingScheduler

SECRET = "secret"
TO = "oncall@example.com"


class FakeSuppressions:
    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], dict[str, Any]] = {}

    def reason(self, channel: str, rhash: str, *, operator_added_only: bool = False) -> str | None:
        entry = self.entries.get((channel, rhash))
        if entry is None or (operator_added_only and entry["source"] is not None):
            return None
        return str(entry["reason"])

    def add(self, *, channel: str, rhash: str, masked: str, reason: str, source_delivery_id: str | None = None) -> bool:
        if (channel, rhash) in self.entries:
            return False
        self.entries[(channel, rhash)] = {"recipient": masked, "reason": reason, "source": source_delivery_id}
        return True


class FakeOutcomes:
    def __init__(self) -> None:
        self.started: dict[str, datetime] = {}
        self.cleared: list[str] = []
        self.sent: dict[str, str | None] = {}  # the SHA-256 of a digest an unknown attempt sent
        self.carried_by: dict[str, str] = {}  # the carrier whose digest carried a delivery (§8)

        self.held: dict[str, str] = {}  # provider message id -> the delivery holding it
        self.rival = False

    def record(
        self, delivery_id: str, channel: str, started_at: datetime | None, *, sent_sha256: str | None = None
    ) -> None:
        assert started_at is not None
        self.started[delivery_id] = max(started_at, self.started.get(delivery_id, started_at))
        self.sent[delivery_id] = sent_sha256

    def attempt(self, delivery_id: str) -> tuple[datetime, str | None, str | None] | None:
        started = self.started.get(delivery_id)
        return None if started is None else (started, self.sent.get(delivery_id), self.carried_by.get(delivery_id))

    def taken(self, delivery_id: str, message_ids: Any) -> set[str]:
        return {m for m in message_ids if self.held.get(m, delivery_id) != delivery_id}

    def rivals(self, delivery_id: str, *, earliest: datetime, latest: datetime) -> list[dict[str, Any] | None]:
        return [None] if self.rival else []  # a rival whose text is unknown counts as ours

    def since(self, delivery_id: str) -> datetime | None:
        return self.started.get(delivery_id)

    def clear(self, delivery_id: str) -> None:
        self.started.pop(delivery_id, None)
        self.cleared.append(delivery_id)


class CountingMetrics(NullMetrics):
    def __init__(self) -> None:
        self.suppressed_by: list[str] = []
        self.unknown_by: list[str] = []
        self.throttled_by: list[tuple[str, str]] = []

    def suppressed(self, channel: str) -> None:
        self.suppressed_by.append(channel)

    def unknown_outcome(self, channel: str) -> None:
        self.unknown_by.append(channel)

    def attempt(self, channel: str, outcome: str) -> None:
        pass

    def throttled(self, channel: str, limit: str) -> None:
        self.throttled_by.append((channel, limit))

    def latency(self, channel: str, seconds: float) -> None:
        pass


class SmsLikeChannel(FakeChannel):
    """A fake SMS channel: any recipient, a fixed destination, and a scripted Twilio look-up."""

    def __init__(self, *errors: DeliveryError, found: str | list[str] | Exception | None = None) -> None:
        super().__init__(*errors)
        self.found = found
        self.lookups: list[datetime] = []
        self.windows: list[tuple[datetime, datetime]] = []

    def prepare(self, message: Message) -> Message:
        return message

    def destination(self, message: Message) -> str:
        return "AC123:+15005550006"

    def find_sent(
        self, message: Message, *, earliest: datetime, latest: datetime, sent_sha256: str | None = None
    ) -> list[str]:
        self.lookups.append(earliest)
        self.windows.append((earliest, latest))
        if isinstance(self.found, Exception):
            raise self.found
        if isinstance(self.found, list):
            return list(self.found)
        return [] if self.found is None else [self.found]


class Harness:
    def __init__(self, channel: FakeChannel | None = None) -> None:
        self.server = fakeredis.FakeServer()
        self.redis = fakeredis.FakeRedis(server=self.server)
        self.store = FakeStore()
        self.channel = channel if channel is not None else FakeChannel()
        self.limiter = FakeLimiter()
        self.scheduler = RecordingScheduler()
        self.cooldowns = Cooldowns(client=self.redis, default_seconds=30.0)
        self.pauses = ChannelPauses(client=self.redis, pause_seconds=300.0)
        self.suppressions = FakeSuppressions()
        self.outcomes = FakeOutcomes()
        self.metrics = CountingMetrics()
        self.executor = DeliveryExecutor(
            store=self.store,  # type: ignore[arg-type]
            poison_queue=FakePoisonQueue(self.store, FakeGauge()),  # type: ignore[arg-type]
            limiter=self.limiter,  # type: ignore[arg-type]
            channel_factory=lambda _: self.channel,
            scheduler=self.scheduler,
            retry_policy=RetryPolicy(max_attempts=5, delays=(5.0, 30.0), max_retry_delay_seconds=3600.0),
            rate_limits=Settings(database_url="", redis_url="").rate_limits,
            queue_depth=FakeGauge(),  # type: ignore[arg-type]
            hash_secret=SECRET,
            metrics=self.metrics,
            rand=lambda: 0.5,
            channel_pause_seconds=300.0,
            feedback=ProviderFeedback(
                cooldowns=self.cooldowns,
                pauses=self.pauses,
                suppressions=self.suppressions,  # type: ignore[arg-type]
                outcomes=self.outcomes,  # type: ignore[arg-type]
                hash_secret=SECRET,
                metrics=self.metrics,
            ),
        )

    def run(self, delivery_id: str = "d-1", attempt: int = 0, channel: str = "email", to: str = TO) -> dict[str, Any]:
        request = DeliveryRequest(
            delivery_id=delivery_id,
            channel=ChannelType(channel),
            recipient=to,
            subject="Disk full",
            body="db-1 at 99%",
            attempt=attempt,
        )
        return dict(self.executor.run(request))

    def make_due(self, delivery_id: str = "d-1") -> None:
        row = self.store.get(delivery_id)
        assert row is not None and row.next_attempt_at is not None
        self.store.clock.now = row.next_attempt_at


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.redis.close()


# -- suppression --------------------------------------------------------------------------------------
def test_a_suppressed_recipient_is_poisoned_with_its_reason_and_no_request(h: Harness) -> None:
    """``suppressed: <reason>``, nothing sent, no rate-limit slot taken, counted by the metric."""
    h.suppressions.add(channel="email", rhash=recipient_hash(SECRET, "email", TO), masked="o***", reason="bounced")
    result = h.run()
    assert result["outcome"] == "poisoned" and result["error"] == "suppressed: bounced"
    assert h.channel.sent == [] and h.limiter.calls == []
    assert h.metrics.suppressed_by == ["email"]


def test_a_permanent_answer_about_the_recipient_suppresses_it_and_the_next_delivery_is_not_sent(h: Harness) -> None:
    """The first delivery is poisoned with the provider's reason and adds the entry; the second sends nothing."""
    h.channel.errors.append(RecipientRejectedError("smtp recipient refused 550 5.1.1: no such user"))
    first = h.run("d-1")
    assert first["outcome"] == "poisoned"
    [(key, entry)] = h.suppressions.entries.items()
    assert key == ("email", recipient_hash(SECRET, "email", TO))
    assert entry == {"recipient": "o***@example.com", "reason": first["error"], "source": "d-1"}
    second = h.run("d-2")
    assert second["error"] == f"suppressed: {first['error']}"
    assert len(h.channel.sent) == 1


def test_a_provider_added_entry_masks_the_normalized_recipient_like_an_operator_added_one(h: Harness) -> None:
    """``R.Ops@Example.COM`` is stored as ``r***@example.com``, the mask ``suppression add`` gives it too."""
    h.channel.errors.append(RecipientRejectedError("smtp recipient refused 550 5.1.1: no such user"))
    h.run("d-1", to="R.Ops@Example.COM")
    [entry] = h.suppressions.entries.values()
    assert entry["recipient"] == "r***@example.com"


def test_a_cooldown_key_holds_the_masked_destination_for_cooldown_list(h: Harness) -> None:
    """The value ``cooldown list`` shows: never the raw account SID or sender."""
    h.channel.errors.append(SlowDownError("smtp 421 slow down", retry_after=20.0))
    h.run()
    [cooling] = h.cooldowns.active()
    destination = h.channel.destination(h.channel.sent[0] if h.channel.sent else None)  # type: ignore[arg-type]
    assert cooling.destination == mask_destination("email", destination) != "-"


def test_a_plain_permanent_failure_does_not_suppress(h: Harness) -> None:
    """Spam rejection (5.7.1) is about the message, not the recipient: no entry."""
    h.channel.errors.append(PermanentDeliveryError("smtp 554 5.7.1 rejected as spam"))
    assert h.run()["outcome"] == "poisoned"
    assert h.suppressions.entries == {}


# -- cooldown -----------------------------------------------------------------------------------------
def test_a_slow_down_answer_starts_a_cooldown_for_the_destination_with_retry_after(h: Harness) -> None:
    """A 429 with Retry-After 5 cools the destination for 5 s; the delivery itself retries no sooner."""
    h.channel.errors.append(SlowDownError("smtp 421 4.7.0 try later", retry_after=5.0))
    result = h.run()
    assert result["outcome"] == "retry_scheduled"
    dest = destination_hash(SECRET, "email", "email")  # FakeChannel's destination: the channel name
    assert h.cooldowns.remaining("email", dest) == pytest.approx(5.0, abs=0.1)


def test_a_slow_down_without_retry_after_cools_for_the_default(h: Harness) -> None:
    """No Retry-After: ALERT_COOLDOWN_SECONDS (30 here)."""
    h.channel.errors.append(SlowDownError("twilio 20429 too many requests"))
    h.run()
    assert h.cooldowns.remaining("email", destination_hash(SECRET, "email", "email")) == pytest.approx(30, abs=0.1)


def test_a_cooling_destination_defers_without_a_request_or_an_attempt(h: Harness) -> None:
    """Like a rate-limit denial: pending, a deferral counted, next attempt after the cooldown, no send."""
    h.cooldowns.start("email", destination_hash(SECRET, "email", "email"), 20.0)
    result = h.run()
    assert result["outcome"] == "retry_scheduled" and result["status"] == "pending"
    assert result["error"].startswith("rate_limited: cooldown, the email provider asked to slow down")
    row = h.store.get("d-1")
    assert row is not None and row.attempts == 0 and row.deferrals == 1
    assert row.next_attempt_at is not None and row.db_now is not None
    assert (row.next_attempt_at - row.db_now).total_seconds() >= 20.0 - 0.1
    assert h.channel.sent == [] and h.limiter.calls == []
    [follow_up] = h.scheduler.scheduled
    assert follow_up.kind == "defer" and follow_up.delay_seconds >= 20.0 - 0.1
    assert h.metrics.throttled_by == [("email", "cooldown")]


def test_a_cooldown_beyond_max_defer_poisons_like_a_rate_limit(h: Harness) -> None:
    """Deferrals for a cooldown count within ALERT_MAX_DEFER_SECONDS."""
    h.executor.max_defer_seconds = 10.0
    h.cooldowns.start("email", destination_hash(SECRET, "email", "email"), 60.0)
    result = h.run()
    assert result["outcome"] == "poisoned" and result["error"].startswith("rate_limited_too_long: cooldown")
    assert h.channel.sent == []


# -- unknown outcome ----------------------------------------------------------------------------------
def test_an_unknown_outcome_is_recorded_with_when_the_attempt_began_and_counted() -> None:
    """``outcome_unknown:`` error, transient retry, the claim time kept for the look-up, one metric."""
    h = Harness(SmsLikeChannel(OutcomeUnknownError("twilio no answer after sending: ReadTimeout")))
    with capture_logs() as logs:
        result = h.run(channel="sms", to="+15551234567")
    assert result["outcome"] == "retry_scheduled"
    assert result["error"] == "outcome_unknown: twilio no answer after sending: ReadTimeout"
    assert h.outcomes.started == {"d-1": h.store.clock.now}
    assert h.metrics.unknown_by == ["sms"]
    assert any(e["event"] == "delivery_outcome_unknown" and e["delivery_id"] == "d-1" for e in logs)


def test_an_sms_found_at_twilio_after_an_unknown_outcome_is_delivered_without_sending_again() -> None:
    """The look-up finds the message: delivered with its SID, no second send."""
    channel = SmsLikeChannel(OutcomeUnknownError("twilio no answer after sending: ReadTimeout"), found="SM42")
    h = Harness(channel)
    h.run(channel="sms", to="+15551234567")
    started = h.outcomes.started["d-1"]
    h.make_due()
    result = h.run(attempt=1, channel="sms", to="+15551234567")
    assert result["outcome"] == "delivered" and result["message_id"] == "SM42"
    assert len(channel.sent) == 1
    assert channel.windows == [(started - timedelta(seconds=5), started + timedelta(seconds=70))]
    assert h.outcomes.cleared == ["d-1"]


@pytest.mark.parametrize(
    ("found", "held_by", "delivered_via_carrier"),
    [
        ("SM42", None, True),
        ("SM42", "carrier", True),
        ("SM42", "someone-else", False),
        (["SM42", "SM43"], None, False),
        (None, None, False),
    ],
    ids=["found-held-by-none", "found-held-by-its-carrier", "held-by-another", "several", "none"],
)
def test_a_carried_sms_whose_carrier_outcome_was_unknown_ends_via_that_carrier_only_on_one_free_match(
    found: str | list[str] | None, held_by: str | None, delivered_via_carrier: bool
) -> None:
    """The look-up of a carried row matches the digest its carrier sent: one message held by no delivery or
    by the carrier itself ends it delivered via the carrier with no id of its own; anything else sends it alone."""
    channel = SmsLikeChannel(found=found)
    h = Harness(channel)
    h.outcomes.started["d-1"] = h.store.clock.now
    h.outcomes.sent["d-1"] = "ab" * 32
    h.outcomes.carried_by["d-1"] = "carrier"
    if held_by is not None:
        h.outcomes.held["SM42"] = held_by
    result = h.run(attempt=0, channel="sms", to="+15551234567")
    assert result["outcome"] == "delivered"
    stored = h.store.rows["d-1"]
    if delivered_via_carrier:
        assert (stored.delivered_via, stored.message_id, channel.sent) == ("carrier", None, [])
    else:
        assert stored.delivered_via is None and len(channel.sent) == 1


def test_an_sms_not_found_at_twilio_is_sent_again_once() -> None:
    """The look-up finds nothing: the retry goes ahead, exactly one more send."""
    channel = SmsLikeChannel(OutcomeUnknownError("twilio no answer after sending: ReadTimeout"), found=None)
    h = Harness(channel)
    h.run(channel="sms", to="+15551234567")
    h.make_due()
    result = h.run(attempt=1, channel="sms", to="+15551234567")
    assert result["outcome"] == "delivered"
    assert len(channel.sent) == 2 and len(channel.lookups) == 1


def test_a_replayed_sms_after_an_unknown_outcome_is_still_looked_up() -> None:
    """``poison replay`` resets attempts to 0; the unknown attempt may still have gone out, so ask first."""
    channel = SmsLikeChannel(found="SM77")
    h = Harness(channel)
    h.outcomes.started["d-1"] = h.store.clock.now
    result = h.run(attempt=0, channel="sms", to="+15551234567")
    assert result["outcome"] == "delivered" and result["message_id"] == "SM77"
    assert channel.sent == []


@pytest.mark.parametrize(
    ("lookup_error", "named"),
    [
        (TransientDeliveryError("outcome_unknown: twilio lookup failed: HTTP 500"), "HTTP 500"),
        (TransientDeliveryError("outcome_unknown: twilio lookup failed: HTTP 404 code 20404"), "HTTP 404"),
        (TransientDeliveryError("outcome_unknown: twilio lookup failed: ConnectionError"), "ConnectionError"),
    ],
    ids=["http-500", "http-404", "connection-error"],
)
def test_a_failed_look_up_defers_without_using_an_attempt_and_names_the_answer(
    lookup_error: TransientDeliveryError, named: str
) -> None:
    """Twilio cannot be asked: nothing is sent and nothing was sent, so no attempt is used (issue 20 point 7)."""
    channel = SmsLikeChannel(OutcomeUnknownError("twilio no answer after sending: ReadTimeout"), found=lookup_error)
    h = Harness(channel)
    h.run(channel="sms", to="+15551234567")
    for round_ in range(1, 4):  # again and again: never poisoned for the look-up alone, attempts never grow
        h.make_due()
        result = h.run(attempt=1, channel="sms", to="+15551234567")
        assert result["outcome"] == "retry_scheduled" and named in result["error"]
        assert result["error"].startswith("outcome_unknown: twilio lookup failed")
        row = h.store.get("d-1")
        assert row is not None and row.attempts == 1 and row.deferrals == round_
    assert len(channel.sent) == 1 and len(channel.lookups) == 3


def test_a_look_up_refused_for_the_account_pauses_sms_and_defers_without_an_attempt() -> None:
    """A 401 to the look-up is the account's settings: the channel is paused like after a refused send."""
    refused = ChannelMisconfiguredError("twilio lookup refused: HTTP 401 code 20003 (configuration error)")
    channel = SmsLikeChannel(OutcomeUnknownError("twilio no answer after sending: ReadTimeout"), found=refused)
    h = Harness(channel)
    h.run(channel="sms", to="+15551234567")
    h.make_due()
    result = h.run(attempt=1, channel="sms", to="+15551234567")
    assert result["outcome"] == "retry_scheduled"
    assert result["error"] == f"channel_paused: {refused.reason}"
    assert h.pauses.state("sms") is not None and h.pauses.state("email") is None
    row = h.store.get("d-1")
    assert row is not None and row.attempts == 1


def test_e_mail_after_an_unknown_outcome_just_retries_without_a_look_up(h: Harness) -> None:
    """Only SMS asks the provider; e-mail resends (its Message-ID lets mailboxes fold a duplicate)."""
    h.channel.errors.append(OutcomeUnknownError("smtp no reply after end of DATA: SMTPServerDisconnected"))
    h.run()
    h.make_due()
    assert h.run(attempt=1)["outcome"] == "delivered"
    assert len(h.channel.sent) == 2


def test_a_feedback_store_failure_never_fails_the_delivery(h: Harness) -> None:
    """Recording a suppression is a side effect: if it fails, the delivery is still poisoned and logged."""

    def broken_add(**_: Any) -> bool:
        raise ConnectionError("database gone")

    h.suppressions.add = broken_add  # type: ignore[method-assign,assignment]
    h.channel.errors.append(RecipientRejectedError("smtp recipient refused 550 5.1.1"))
    with capture_logs() as logs:
        result = h.run()
    assert result["outcome"] == "poisoned"
    assert any(e["event"] == "provider_feedback_not_recorded" for e in logs)
    assert h.store.get("d-1") is not None and h.store.get("d-1").status is DeliveryStatus.POISON  # type: ignore[union-attr]


# -- channel classification that feeds the policies ----------------------------------------------------
def test_the_cooldown_default_comes_from_alert_cooldown_seconds() -> None:
    """ALERT_COOLDOWN_SECONDS (default 30) is read and validated like every other setting."""
    from alert_worker.errors import ConfigurationError

    assert Settings.from_env({}).cooldown_seconds == 30.0
    assert Settings.from_env({"ALERT_COOLDOWN_SECONDS": "12.5"}).cooldown_seconds == 12.5
    with pytest.raises(ConfigurationError, match="ALERT_COOLDOWN_SECONDS"):
        Settings.from_env({"ALERT_COOLDOWN_SECONDS": "soon"})


@pytest.mark.parametrize(
    ("reply", "what", "expected"),
    [
        ("5.1.1 no such user", "smtp recipient refused", RecipientRejectedError),
        ("5.1.8 bad sender domain", "smtp", PermanentDeliveryError),
        ("5.1.1 unknown", "smtp sender refused", PermanentDeliveryError),
        ("4.7.0 try later", "smtp", SlowDownError),
        ("4.2.2 mailbox full", "smtp", TransientDeliveryError),
    ],
    ids=["5.1.1-recipient", "5.1.8-sender-not-suppressed", "sender-refused-not-suppressed", "4.7.0", "4.2.2"],
)
def test_only_recipient_answers_suppress_and_only_slow_downs_cool(reply: str, what: str, expected: type) -> None:
    """5.1.x about the recipient suppresses; the sender's own 5.1.7/5.1.8 do not; 4.7.x cools the server."""
    from alert_worker.channels.email import classify_smtp_reply

    code = 550 if reply.startswith("5") else 450
    assert type(classify_smtp_reply(code, reply, what=what)) is expected


@pytest.mark.parametrize(
    ("exc", "unknown"),
    [
        (requests.ReadTimeout("read"), True),
        (requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError())), True),
        (requests.ConnectTimeout("connect"), False),
        (requests.ConnectionError("Max retries exceeded (NewConnectionError)"), False),
    ],
    ids=["read-timeout", "aborted-after-sending", "connect-timeout", "refused"],
)
def test_an_outcome_is_unknown_only_when_the_request_may_have_been_sent(exc: Exception, unknown: bool) -> None:
    """Before a connection exists nothing was sent; after it, silence may hide an accepted message."""
    from alert_worker.channels.http import outcome_unknown

    assert outcome_unknown(exc) is unknown  # type: ignore[arg-type]


# -- channel pause (docs/contract.md §7.7) ----------------------------------------------------------------
AUTH_REFUSED = "smtp_auth_failed 535: check SMTP_USER and SMTP_PASSWORD"


def test_a_refused_setting_pauses_the_channel_and_defers_the_delivery_that_found_it(h: Harness) -> None:
    """Not poisoned: deferred by the pause, no attempt counted, the reason on the row and in the pause key."""
    h.channel.errors.append(ChannelMisconfiguredError(AUTH_REFUSED))
    result = h.run()
    assert result["outcome"] == "retry_scheduled" and result["error"] == f"channel_paused: {AUTH_REFUSED}"
    row = h.store.get("d-1")
    assert row is not None and row.status is DeliveryStatus.PENDING and row.attempts == 0
    assert h.store.rows["d-1"].error == "channel_paused: smtp_auth_failed 535: check SMTP_USER and SMTP_PASSWORD"
    state = h.pauses.state("email")
    assert state is not None and state[0] == AUTH_REFUSED and 299 < state[1] <= 300
    assert 300 <= h.scheduler.scheduled[-1].delay_seconds <= 330  # the pause, plus the deferral's jitter
    assert len(h.channel.sent) == 1  # the one attempt that found it


def test_while_a_channel_is_paused_its_deliveries_wait_without_a_request_or_an_attempt(h: Harness) -> None:
    """Twenty deliveries behind a refused password: one attempt, nineteen deferrals, nothing poisoned."""
    h.channel.errors.append(ChannelMisconfiguredError(AUTH_REFUSED))
    results = [h.run(f"d-{i}") for i in range(20)]
    assert len(h.channel.sent) == 1
    assert {r["outcome"] for r in results} == {"retry_scheduled"}
    assert {r["error"] for r in results} == {f"channel_paused: {AUTH_REFUSED}"}
    assert all(found.row.attempts == 0 for found in h.store.rows.values())
    assert h.limiter.calls[1:] == []  # a held delivery takes no rate-limit slot


def test_a_pause_holds_only_its_own_channel(h: Harness) -> None:
    h.pauses.pause("sms", "twilio 20003 authentication failed (configuration error)")
    assert h.run()["outcome"] == "delivered"


def test_when_the_pause_ends_the_deferred_delivery_is_sent_without_a_replay(h: Harness) -> None:
    """Fixing the setting is enough: the row is still pending and its next run sends it."""
    h.channel.errors.append(ChannelMisconfiguredError(AUTH_REFUSED))
    h.run()
    h.redis.delete("alert:paused:email")  # the pause's TTL ran out
    h.make_due()
    result = h.run(attempt=0)
    assert result["outcome"] == "delivered" and len(h.channel.sent) == 2


def test_a_channel_paused_past_the_deferral_budget_is_poisoned_with_the_reason(h: Harness) -> None:
    """ALERT_MAX_DEFER_SECONDS bounds the wait as for any deferral."""
    h.executor.max_defer_seconds = 100.0  # shorter than the 300 s pause
    h.pauses.pause("email", AUTH_REFUSED)
    result = h.run()
    assert result["outcome"] == "poisoned" and "channel_paused" in result["error"]
    assert h.channel.sent == []


def _pause_ended(h: Harness) -> None:
    """The pause key's TTL ran out; the probation (one more period) is still there."""
    h.redis.delete("alert:paused:email")
    h.store.clock.now = max(f.row.next_attempt_at for f in h.store.rows.values() if f.row.next_attempt_at)


def test_after_a_pause_exactly_one_delivery_tries_the_settings_and_a_refusal_pauses_again(h: Harness) -> None:
    """One login per pause period: the first delivery after the pause probes, the rest wait for its answer."""
    for _ in range(2):
        h.channel.errors.append(ChannelMisconfiguredError(AUTH_REFUSED))
    for i in range(5):
        h.run(f"d-{i}")
    assert len(h.channel.sent) == 1
    _pause_ended(h)
    results = [h.run(f"d-{i}", attempt=0) for i in range(5)]
    assert len(h.channel.sent) == 2, "one probe, refused"
    assert [r["outcome"] for r in results] == ["retry_scheduled"] * 5
    assert h.pauses.state("email") is not None, "paused for another period"


def test_while_one_delivery_probes_the_others_wait_for_its_answer(h: Harness) -> None:
    h.pauses.pause("email", AUTH_REFUSED)
    h.redis.delete("alert:paused:email")
    assert h.pauses.admit("email") == (AUTH_REFUSED, 0.0, True)  # another worker's delivery is probing
    result = h.run()
    assert result["outcome"] == "retry_scheduled" and result["error"] == f"channel_paused: {AUTH_REFUSED}"
    assert h.channel.sent == []
    assert 1 <= h.scheduler.scheduled[-1].delay_seconds <= 66, "until the probe's answer: a minute, plus jitter"


def test_an_accepted_probe_lifts_the_probation_and_the_waiting_deliveries_flow(h: Harness) -> None:
    h.pauses.pause("email", AUTH_REFUSED)
    h.redis.delete("alert:paused:email")
    assert h.run("d-1")["outcome"] == "delivered"
    assert not h.redis.exists("alert:pause_probation:email") and not h.redis.exists("alert:pause_probe:email")
    assert [h.run(f"d-{i}")["outcome"] for i in range(2, 5)] == ["delivered"] * 3


def test_a_probe_failing_for_another_reason_lets_the_next_delivery_probe(h: Harness) -> None:
    """A timeout says nothing about the settings: the probe is freed, the probation stays."""
    h.pauses.pause("email", AUTH_REFUSED)
    h.redis.delete("alert:paused:email")
    h.channel.errors.append(TransientDeliveryError("smtp_timeout"))
    assert h.run("d-1")["outcome"] == "retry_scheduled"
    assert not h.redis.exists("alert:pause_probe:email") and h.redis.exists("alert:pause_probation:email")
    assert h.run("d-2")["outcome"] == "delivered"
