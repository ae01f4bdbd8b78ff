"""The executor's part of alert storms (docs/contract.md §8), on fakes: holds, carrying, release."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from alert_worker.delivery import DeliveryRequest
from alert_worker.digest import is_held
from alert_worker.errors import OutcomeUnknownError, TransientDeliveryError
from alert_worker.models import ChannelType, DeliveryStatus, Message
from alert_worker.rate_limit import RateDecision
from tests.support.fakes import FakeChannel, FakeLimiter
from tests.unit.test_executor import Harness, _pending_row

RECIPIENT_DENIED = RateDecision(allowed=False, wait_seconds=20.0, limit_name="recipient")


def _storm_harness(*, digest: bool = True, **kwargs: Any) -> Harness:
    h = Harness(**kwargs)
    h.executor = replace(h.executor, digest=digest, digest_max_items=3)
    return h


def _hold(h: Harness, delivery_id: str) -> None:
    """A pending row held by the recipient limit, for the harness's recipient."""
    rhash, _ = h.executor.identity(ChannelType.EMAIL, "ops@example.com")
    h.store.add(
        replace(
            _pending_row(), id=delivery_id, recipient_hash=rhash, next_attempt_at=h.store.clock.now + timedelta(hours=1)
        ),
        error="rate_limited: recipient limit",
    )


@pytest.mark.parametrize(
    ("digest", "outcome"),
    [(True, "retry_scheduled"), (False, "poisoned")],
    ids=["digest-on-held", "digest-off-poisoned"],
)
def test_a_recipient_limit_denial_past_the_deferral_budget_is_held_not_poisoned(digest: bool, outcome: str) -> None:
    """Deferred since 3590 s, the recipient's slot frees in 20 s: past the 3600 s budget, yet held (§8)."""
    h = _storm_harness(digest=digest, limiter=FakeLimiter(RECIPIENT_DENIED))
    h.store.add(_pending_row(deferrals=40, deferred_since=h.store.clock.now - timedelta(seconds=3590)))
    assert h.run()["outcome"] == outcome


def test_a_channel_limit_denial_past_the_budget_is_still_poisoned_with_the_digest_on() -> None:
    h = _storm_harness(limiter=FakeLimiter(RateDecision(allowed=False, wait_seconds=20.0, limit_name="channel")))
    h.store.add(_pending_row(deferrals=40, deferred_since=h.store.clock.now - timedelta(seconds=3590)))
    assert h.run()["error"] == "rate_limited_too_long: channel limit"


def test_a_send_carries_the_held_deliveries_up_to_the_digest_size_and_writes_them_delivered_via_it() -> None:
    h = _storm_harness()
    for n in range(3):
        _hold(h, f"held-{n}")
    assert h.run()["outcome"] == "delivered"
    [message] = h.channel.sent
    assert [m.delivery_id for m in message.carried] == ["held-0", "held-1"], "digest of 3: the carrier and two"
    assert [h.store.rows[f"held-{n}"].delivered_via for n in range(2)] == ["delivery-1", "delivery-1"]
    assert h.store.rows["held-2"].row.status is DeliveryStatus.PENDING
    assert h.limiter.calls == [("email", h.row().recipient_hash)], "one message, one slot"


def test_a_failed_carrying_send_hands_the_carried_back_held() -> None:
    h = _storm_harness(channel=FakeChannel(TransientDeliveryError("smtp 451")))
    _hold(h, "held-0")
    assert h.run()["outcome"] == "retry_scheduled"
    held = h.store.rows["held-0"]
    assert (held.row.status, held.row.claim_token, held.error) == (
        DeliveryStatus.PENDING,
        None,
        "rate_limited: recipient limit",
    )


def test_with_the_digest_off_nothing_is_carried() -> None:
    h = _storm_harness(digest=False)
    _hold(h, "held-0")
    h.run()
    assert h.channel.sent[0].carried == ()


def test_release_passes_the_limit_once_and_carries_the_held_even_with_the_digest_off() -> None:
    h = _storm_harness(digest=False, limiter=FakeLimiter(RECIPIENT_DENIED))
    _hold(h, "held-0")
    h.store.add(replace(_pending_row(), id="oldest"))
    request = DeliveryRequest(
        delivery_id="oldest",
        channel=ChannelType.EMAIL,
        recipient="ops@example.com",
        subject="s",
        body="b",
        release=True,
    )
    assert h.executor.run(request)["outcome"] == "delivered"
    assert h.limiter.calls == []
    assert h.store.rows["held-0"].delivered_via == "oldest"


def test_an_hour_held_by_the_recipient_limit_does_not_spend_the_budget_of_a_later_channel_limit_deferral() -> None:
    """Held for an hour, then the per-minute channel limit denies for 20 s: deferred, not poisoned, because the
    hold ended the run of deferrals (``deferred_since`` cleared) instead of extending it."""
    channel_denied = RateDecision(allowed=False, wait_seconds=20.0, limit_name="channel")
    h = _storm_harness(limiter=FakeLimiter(RECIPIENT_DENIED, channel_denied))
    h.store.add(_pending_row(deferrals=3, deferred_since=h.store.clock.now - timedelta(seconds=100)))
    h.run()
    assert h.row().deferred_since is None
    h.store.clock.advance(3600)
    h.store.add(replace(h.row(), next_attempt_at=None), error="rate_limited: recipient limit")
    assert h.run()["outcome"] == "retry_scheduled"
    assert h.row().deferred_since == h.store.clock.now


@pytest.mark.parametrize(
    "error",
    [OutcomeUnknownError("outcome_unknown: smtp no reply after DATA"), RuntimeError("job timeout")],
    ids=["unknown-outcome", "send-cut-off"],
)
def test_a_carrying_send_whose_outcome_is_unknown_puts_the_carried_back_due_and_not_held(
    error: Exception,
) -> None:
    """The provider may have the message: the carried rows go back pending, due and not held (no other message
    carries them), each for its own job; the carrier's next send carries nothing of theirs."""
    h = _storm_harness(channel=FakeChannel(error))  # type: ignore[arg-type]
    _hold(h, "held-0")
    _hold(h, "held-1")
    with contextlib.suppress(RuntimeError):
        h.run()
    for n in range(2):
        back = h.store.rows[f"held-{n}"]
        assert (back.row.status, back.row.claim_token, back.error) == (
            DeliveryStatus.PENDING,
            None,
            "outcome_unknown: carried by delivery-1",
        )
        assert not is_held(back.row.status.value, back.error)
    assert [(i, c, s) for i, c, _, s in h.store.unknown_carried] == [
        ("held-0", "delivery-1", None),
        ("held-1", "delivery-1", None),
    ], "e-mail: no look-up, so no SHA-256"
    assert h.store.claim_held(channel="email", recipient_hash=h.row().recipient_hash, exclude_id="other", limit=5) == []
    h.store.rows["delivery-1"].row = replace(h.row(), status=DeliveryStatus.PENDING, next_attempt_at=None)
    assert h.run()["outcome"] == "delivered"
    assert h.channel.sent[-1].carried == ()


def test_carried_alerts_that_the_message_cannot_show_in_full_stay_held() -> None:
    h = _storm_harness(channel=_ShowsOne())
    _hold(h, "held-0")
    _hold(h, "held-1")
    assert h.run()["outcome"] == "delivered"
    assert [m.delivery_id for m in h.channel.sent[0].carried] == ["held-0"]
    held = h.store.rows["held-1"]
    assert (held.row.status, held.error) == (DeliveryStatus.PENDING, "rate_limited: recipient limit")


class _ShowsOne(FakeChannel):
    def carried_fit(self, message: Message, carried: Sequence[Message]) -> int:
        return min(1, len(carried))
