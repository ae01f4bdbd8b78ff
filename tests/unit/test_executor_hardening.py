"""Executor hardening on fakes: deferrals within the budget, one identity per recipient, and a wake-up for
a row that is not yet due."""

from __future__ import annotations

from datetime import timedelta

import pytest

from alert_worker.models import ChannelType
from alert_worker.rate_limit import RateDecision
from alert_worker.redaction import recipient_hash
from tests.support.fakes import FakeLimiter
from tests.unit.test_executor import Harness, _pending_row

HOOK = "https://hooks.slack.com/services/T000/B000/XXXXsecret"


def test_a_denial_whose_slot_frees_within_the_budget_is_deferred_not_poisoned() -> None:
    """Per-recipient-hour slot frees in 3,590 s: deferred with the jitter clamped, not rate_limited_too_long."""
    denial = RateDecision(allowed=False, wait_seconds=3590.0, limit_name="recipient")
    h = Harness(limiter=FakeLimiter(denial), max_defer=3600.0)
    result = h.run()
    assert result["outcome"] == "retry_scheduled" and result["error"] == "rate_limited: recipient limit"
    [follow_up] = h.scheduler.scheduled
    assert follow_up.kind == "defer" and 3590.0 <= follow_up.delay_seconds <= 3600.0


@pytest.mark.parametrize(
    "variants",
    [(" Ops@Example.com", "ops@example.com", "OPS@EXAMPLE.COM ")],
    ids=["email-case-and-space"],
)
def test_variants_of_one_email_address_share_one_bucket_hash_and_mask(variants: tuple[str, ...]) -> None:
    """The limiter, the stored hash and the mask all see the normalized address."""
    h = Harness()
    for number, variant in enumerate(variants):
        h.run(delivery_id=f"d-{number}", recipient=variant)
    expected = recipient_hash("secret", "email", "ops@example.com")
    assert {bucket for _, bucket in h.limiter.calls} == {expected}
    assert {h.row(f"d-{n}").recipient_hash for n in range(len(variants))} == {expected}


def test_slack_variants_and_the_default_share_one_identity() -> None:
    """``""``, ``default``, ``URL?``, ``URL#x`` and an upper-cased host are one webhook."""
    h = Harness(default_webhook_url=HOOK)
    variants = [
        HOOK,
        HOOK + "?",
        HOOK + "#x",
        HOOK.replace("hooks.slack.com", "HOOKS.Slack.com"),
        "",
        "default",
        " default",
    ]
    identities = {h.executor.identity(ChannelType.SLACK, v) for v in variants}
    assert identities == {(recipient_hash("secret", "slack", HOOK), "hooks.slack.com/***")}


def test_a_pending_row_not_yet_due_schedules_a_wake_up_for_its_due_time() -> None:
    """Clock skew or an early scheduler: a job for the due time, not a 60-90 s wait for the sweep."""
    h = Harness()
    due = h.store.clock.now + timedelta(seconds=30)
    h.store.add(_pending_row(attempts=1, next_attempt_at=due))
    result = h.run(job_id="alert-delivery-1-retry-abc")
    assert result["outcome"] == "skipped" and result["status"] == "pending"
    [wake] = h.scheduler.scheduled
    assert wake.kind == "due" and wake.delay_seconds == pytest.approx(30.0)
    assert wake.attempt == 1 and wake.queue == "alerts" and wake.payload["recipient"] == "ops@example.com"
    assert wake.token.startswith(f"{due:%Y%m%dT%H%M%S%f}-")
    assert h.channel.sent == []


def test_the_wake_up_id_is_stable_per_job_and_never_the_running_jobs_own() -> None:
    """The same job asks twice: one id. A wake-up that itself runs early makes a different one."""
    h = Harness()
    h.store.add(_pending_row(next_attempt_at=h.store.clock.now + timedelta(seconds=30)))
    h.run(job_id="job-a")
    h.run(job_id="job-a")
    first, again = h.scheduler.scheduled
    assert first.token == again.token
    h.run(job_id=f"alert-delivery-1-due-{first.token}")
    assert h.scheduler.scheduled[-1].token != first.token


def test_rows_that_are_terminal_or_in_progress_schedule_no_wake_up() -> None:
    """Only a pending row with a due time in the future gets one."""
    h = Harness()
    h.run()
    h.run()
    assert h.scheduler.scheduled == []
