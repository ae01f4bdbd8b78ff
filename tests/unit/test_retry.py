"""The retry policy is a pure function of attempts, Retry-After and the random draw."""

from __future__ import annotations

import pytest

from alert_worker.retry import DeferralPolicy, RetryPolicy, compute_delay, parse_retry_after

DELAYS = (5.0, 30.0, 120.0, 600.0)


@pytest.mark.parametrize(
    ("attempts_made", "retry_after", "draw", "expected"),
    [
        (1, None, 0.0, 5.0),
        (1, None, 1.0, 5.5),
        (2, None, 0.0, 30.0),
        (3, None, 0.5, 126.0),
        (4, None, 0.0, 600.0),
        (9, None, 0.0, 600.0),
        (1, 42.0, 0.0, 42.0),
        (1, 2.0, 0.0, 5.0),
        (4, 10.0, 1.0, 660.0),
    ],
    ids=[
        "first-failure-no-jitter",
        "first-failure-full-jitter",
        "second-failure",
        "third-failure-half-jitter",
        "fourth-failure",
        "last-delay-repeats",
        "retry-after-longer-wins",
        "retry-after-shorter-ignored",
        "jitter-above-retry-after",
    ],
)
def test_compute_delay_table(attempts_made: int, retry_after: float | None, draw: float, expected: float) -> None:
    """Delay = delays[n-1] (last repeats) + up to 10 % jitter, never below Retry-After."""
    assert compute_delay(attempts_made, retry_after, delays=DELAYS, rand=lambda: draw) == pytest.approx(expected)


def test_compute_delay_rejects_nonsense() -> None:
    """A delay for zero failures or with no delays configured is a programming error."""
    with pytest.raises(ValueError):
        compute_delay(0, delays=DELAYS)
    with pytest.raises(ValueError):
        compute_delay(1, delays=())


@pytest.mark.parametrize(
    ("attempts_made", "retry_after", "retry", "reason"),
    [
        (1, None, True, None),
        (4, None, True, None),
        (5, None, False, "attempts_exhausted"),
        (2, 3600.0, True, None),
        (2, 3601.0, False, "retry_after_too_long"),
    ],
    ids=["first", "fourth-of-five", "fifth-of-five", "retry-after-at-max", "retry-after-over-max"],
)
def test_policy_decides_retry_or_give_up(
    attempts_made: int, retry_after: float | None, retry: bool, reason: str | None
) -> None:
    """Give up on the last attempt or when the provider asks for longer than we may wait."""
    policy = RetryPolicy(max_attempts=5, delays=DELAYS, max_retry_delay_seconds=3600.0, rand=lambda: 0.0)
    decision = policy.after_transient_failure(attempts_made, retry_after)
    assert (decision.retry, decision.reason) == (retry, reason)
    if retry:
        assert decision.delay_seconds >= (retry_after or 0.0)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("-5", 0.0),
        ("", None),
        (None, None),
        ("soon", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
    ids=["seconds", "padded", "zero", "negative-clamped", "empty", "missing", "garbage", "nan", "date-in-the-past"],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    """Retry-After in delta-seconds or HTTP-date form; nonsense is ignored."""
    assert parse_retry_after(header) == expected


# wait the limiter reported, time already deferred, random draw -> deferred?, delay
DEFERRALS = [
    (10.0, 0.0, 0.0, True, 10.0),
    (10.0, 0.0, 1.0, True, 11.0),
    (100.0, 0.0, 1.0, True, 110.0),
    (3590.0, 0.0, 1.0, True, 3600.0),
    (3590.0, 0.0, 0.0, True, 3590.0),
    (3600.0, 0.0, 1.0, True, 3600.0),
    (3600.5, 0.0, 0.0, False, 0.0),
    (600.0, 2990.0, 1.0, True, 610.0),
    (600.0, 3000.0, 1.0, True, 600.0),
    (600.0, 3001.0, 0.0, False, 0.0),
]
DEFERRAL_IDS = [
    "short-wait-no-jitter",
    "short-wait-min-1s-jitter",
    "ten-percent-jitter",
    "3590s-jitter-clamped-to-budget",
    "3590s-no-jitter",
    "exactly-the-budget",
    "past-the-budget",
    "later-denial-jitter-clamped",
    "later-denial-fits-exactly",
    "later-denial-past-the-budget",
]


@pytest.mark.parametrize(("wait", "deferred_for", "draw", "defer", "delay"), DEFERRALS, ids=DEFERRAL_IDS)
def test_a_denial_is_deferred_when_its_wait_fits_the_budget_and_jitter_never_overshoots(
    wait: float, deferred_for: float, draw: float, defer: bool, delay: float
) -> None:
    """The wait (not wait + jitter) is compared with ALERT_MAX_DEFER_SECONDS; jitter takes what is left."""
    decision = DeferralPolicy(max_defer_seconds=3600.0, rand=lambda: draw).after_denial(wait, deferred_for)
    assert decision.defer is defer
    assert decision.delay_seconds == pytest.approx(delay)
    if defer:
        assert deferred_for + decision.delay_seconds <= 3600.0
