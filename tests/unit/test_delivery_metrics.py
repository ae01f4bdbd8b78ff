"""The executor reports retries by reason and deferrals by reason to its metrics sink."""

from __future__ import annotations

from alert_worker.errors import TransientDeliveryError
from alert_worker.rate_limit import RateDecision
from tests.support.fakes import FakeChannel, FakeLimiter
from tests.unit.test_executor import Harness


class RecordingMetrics:
    """A hand-written sink: every call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def attempt(self, channel: str, outcome: str) -> None:
        self.calls.append(("attempt", channel, outcome))

    def throttled(self, channel: str, limit: str) -> None:
        self.calls.append(("throttled", channel, limit))

    def latency(self, channel: str, seconds: float) -> None:
        self.calls.append(("latency", channel))

    def retried(self, channel: str, error: str) -> None:
        self.calls.append(("retried", channel, error))

    def deferred(self, channel: str, reason: str) -> None:
        self.calls.append(("deferred", channel, reason))


def test_a_transient_failure_counts_one_retry_with_the_failures_reason() -> None:
    """The sink gets the error text; RedisMetrics folds it into a bounded reason class."""
    h = Harness(channel=FakeChannel(TransientDeliveryError("smtp 451 4.3.0: try later")))
    h.executor.metrics = metrics = RecordingMetrics()
    assert h.run()["outcome"] == "retry_scheduled"
    assert metrics.calls == [
        ("attempt", "email", "transient_failure"),
        ("retried", "email", "smtp 451 4.3.0: try later"),
    ]


def test_a_rate_limit_denial_counts_one_throttle_and_one_deferral_by_limit() -> None:
    """Throttled says which limit denied; deferred counts the put-off delivery (no attempt used)."""
    h = Harness(limiter=FakeLimiter(RateDecision(allowed=False, wait_seconds=20.0, limit_name="recipient")))
    h.executor.metrics = metrics = RecordingMetrics()
    assert h.run()["outcome"] == "retry_scheduled"
    assert metrics.calls == [("throttled", "email", "recipient"), ("deferred", "email", "recipient")]


def test_a_poisoning_last_attempt_counts_no_retry() -> None:
    """Out of attempts: poisoned, not retried."""
    h = Harness(channel=FakeChannel(TransientDeliveryError("slack 503")), max_attempts=1)
    h.executor.metrics = metrics = RecordingMetrics()
    assert h.run()["outcome"] == "poisoned"
    assert [c[0] for c in metrics.calls] == ["attempt"]
