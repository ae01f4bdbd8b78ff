"""When to try again: a pure backoff function, the retry policy after a failure and the deferral policy
after a rate-limit denial. No I/O and no clock: each is a table in the unit tests."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

JITTER_FRACTION = 0.1


def compute_delay(
    attempts_made: int,
    retry_after: float | None = None,
    *,
    delays: Sequence[float],
    jitter_fraction: float = JITTER_FRACTION,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after ``attempts_made`` failed attempts.

    The n-th failure waits ``delays[n-1]`` (the last delay repeats) plus up to ``jitter_fraction`` of it,
    so a provider outage does not bring every retry back in the same second; never shorter than the
    provider's ``retry_after``.
    """
    if attempts_made < 1:
        raise ValueError("attempts_made must be >= 1")
    if not delays:
        raise ValueError("delays must not be empty")
    base = float(delays[min(attempts_made, len(delays)) - 1])
    delay = base * (1.0 + jitter_fraction * rand())
    if retry_after is not None and retry_after > delay:
        delay = float(retry_after)
    return delay


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_seconds: float = 0.0
    reason: str | None = None  # why we gave up, when ``retry`` is False


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    delays: tuple[float, ...]
    max_retry_delay_seconds: float
    rand: Callable[[], float] = random.random

    def after_transient_failure(self, attempts_made: int, retry_after: float | None) -> RetryDecision:
        """Retry with a delay, or give up with a reason the operator can read."""
        if attempts_made >= self.max_attempts:
            return RetryDecision(retry=False, reason="attempts_exhausted")
        if retry_after is not None and retry_after > self.max_retry_delay_seconds:
            return RetryDecision(retry=False, reason="retry_after_too_long")
        delay = compute_delay(attempts_made, retry_after, delays=self.delays, rand=self.rand)
        return RetryDecision(retry=True, delay_seconds=delay)


@dataclass(frozen=True)
class DeferDecision:
    defer: bool
    delay_seconds: float = 0.0


@dataclass(frozen=True)
class DeferralPolicy:
    """When a rate-limit denial is deferred, and by how long; past the budget it is poisoned.

    The budget (``ALERT_MAX_DEFER_SECONDS``, counted from the first deferral) is compared with the wait
    the limiter reported, never with wait + jitter: a slot that frees within the budget is always waited
    for, and the jitter is clamped to what is left of the budget so the deferral never overshoots it.
    """

    max_defer_seconds: float
    jitter_fraction: float = JITTER_FRACTION
    min_jitter_seconds: float = 1.0
    rand: Callable[[], float] = random.random

    def after_denial(self, wait_seconds: float, deferred_for_seconds: float = 0.0) -> DeferDecision:
        """``deferred_for_seconds``: time already spent deferring this delivery (0 at the first denial)."""
        left = self.max_defer_seconds - max(0.0, deferred_for_seconds) - wait_seconds
        if left < 0:
            return DeferDecision(defer=False)
        jitter = self.rand() * max(self.min_jitter_seconds, self.jitter_fraction * wait_seconds)
        return DeferDecision(defer=True, delay_seconds=wait_seconds + min(jitter, left))


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (delta-seconds or HTTP date), or ``None``."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
