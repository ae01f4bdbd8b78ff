"""Prometheus metrics that survive RQ's forked work-horses: counters live in Redis, the parent serves them.

Every job runs in a short-lived forked process, so in-process counters would vanish with it. Jobs
``HINCRBY`` a few Redis hashes instead (best effort: a failing write is logged, never raised), and
``main()`` renders them, with the gauges, as Prometheus text on ``ALERT_METRICS_PORT``
(``metrics_server``). The numbers are cluster-wide: every worker serving metrics shows the same totals,
so aggregate with ``max`` (docs/operations.md lists every metric and its labels).

Label values are bounded: channels and outcomes are enums, a limit is a limit name, and a retry's free
text reason is folded into a fixed class by ``retry_reason`` so a provider's message never makes a series.

This module stays light (no ``prometheus_client``, ~90 ms to import): every job imports it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import redis
import structlog

from alert_worker.keys import DEFAULT_PREFIX, RedisKeys
from alert_worker.side_effects import SIDE_EFFECT_ERRORS

log = structlog.get_logger("alert_worker.metrics")

# Seconds from enqueue (row creation) to provider acceptance: sub-second sends up to retries over ten minutes.
LATENCY_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
CHANNELS: tuple[str, ...] = ("email", "slack", "sms")
SEP = "|"

# First match wins; the text is a channel's sanitized error (``smtp 451 4.7.1: ...``, ``slack 503``).
_RETRY_REASONS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("outcome_unknown", re.compile(r"^outcome_unknown")),
    ("rate_limited", re.compile(r"too many requests|\b429\b|\b4\.7\.\d+|\b421\b")),
    ("timeout", re.compile(r"timeout|timed out")),
    ("disconnected", re.compile(r"disconnect")),
    ("connection_error", re.compile(r"connection")),
    ("server_error", re.compile(r"server error|\b5\d\d\b")),
    ("smtp_4xx", re.compile(r"^smtp\w* 4\d\d|\b4\.\d+\.\d+")),
    ("worker_error", re.compile(r"^worker_error")),
)


def retry_reason(error: str) -> str:
    """The bounded label for a retry's reason (``other`` when no class fits)."""
    text = error.lower()
    for label, pattern in _RETRY_REASONS:
        if pattern.search(text):
            return label
    return "other"


def bucket_for(seconds: float) -> str:
    """The smallest bucket bound holding ``seconds`` (``+Inf`` beyond the last); stored non-cumulative."""
    for bound in LATENCY_BUCKETS:
        if seconds <= bound:
            return le_label(bound)
    return "+Inf"


def le_label(bound: float) -> str:
    return repr(float(bound))


class RedisMetrics:
    """``executor.DeliveryMetrics`` written to Redis hashes; never raises into a delivery."""

    def __init__(self, *, client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self._keys = RedisKeys(prefix)

    def attempt(self, channel: str, outcome: str) -> None:
        self._incr(self._keys.metrics_attempts, channel, outcome)

    def throttled(self, channel: str, limit: str) -> None:
        """A rate-limit denial (``limit``: channel, recipient, global)."""
        self._incr(self._keys.metrics_throttled, channel, limit)

    def deferred(self, channel: str, reason: str) -> None:
        """A delivery put off without using an attempt (``reason``: a limit name or ``cooldown``)."""
        self._incr(self._keys.metrics_deferrals, channel, reason)

    def retried(self, channel: str, error: str) -> None:
        """A retry scheduled after a transient failure; ``error`` is folded by ``retry_reason``."""
        self._incr(self._keys.metrics_retries, channel, retry_reason(error))

    def suppressed(self, channel: str) -> None:
        """A delivery poisoned because its recipient is on the suppression list."""
        self._write(lambda p: p.hincrby(self._keys.metrics_suppressed, channel, 1))

    def unknown_outcome(self, channel: str) -> None:
        """An attempt that may have reached the provider with no answer (``outcome_unknown:``)."""
        self._write(lambda p: p.hincrby(self._keys.metrics_unknown_outcomes, channel, 1))

    def carried(self, channel: str, count: int) -> None:
        """Held deliveries a message carried (§8): ``alert_carried_total``."""
        self._write(lambda p: p.hincrby(self._keys.metrics_carried, channel, count))

    def released(self, channel: str) -> None:
        """An operator's ``alert-worker release`` sent a recipient's held deliveries past the limit."""
        self._write(lambda p: p.hincrby(self._keys.metrics_released, channel, 1))

    def latency(self, channel: str, seconds: float) -> None:
        def write(p: Any) -> None:
            p.hincrby(self._keys.metrics_latency_buckets, f"{channel}{SEP}{bucket_for(seconds)}", 1)
            p.hincrbyfloat(self._keys.metrics_latency_sum, channel, max(0.0, seconds))

        self._write(write)

    def _incr(self, key: str, channel: str, label: str) -> None:
        self._write(lambda p: p.hincrby(key, f"{channel}{SEP}{label}", 1))

    def _write(self, commands: Callable[[Any], Any]) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            commands(pipe)
            pipe.execute()
        except SIDE_EFFECT_ERRORS as exc:  # a metric must never fail a delivery (a job timeout still does)
            log.warning("metrics_write_failed", error=type(exc).__name__)


def split_field(field: bytes | str) -> tuple[str, str]:
    text = field.decode() if isinstance(field, bytes) else field
    left, _, right = text.partition(SEP)
    return left, right
