"""Prometheus metrics that survive RQ's forked work-horses: counters live in Redis, the parent serves them.

Every job runs in a short-lived forked process, so in-process counters would vanish with it. Jobs
``HINCRBY`` a few Redis hashes instead (best effort: a failing write is logged, never raised), and
``main()`` renders them, with the poison and queue-depth gauges, as Prometheus text on
``ALERT_METRICS_PORT`` (``metrics_server``). The numbers are cluster-wide: every worker serving metrics
shows the same totals, so aggregate with ``max`` (see README "Metrics and alert rules").

This module stays light (no ``prometheus_client``, ~90 ms to import): every job imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from alert_worker.counters import POISON_COUNT_KEY, QUEUE_DEPTH_KEY

log = structlog.get_logger("alert_worker.metrics")

# Seconds from row creation to provider acceptance: sub-second sends up to retries after an hour.
LATENCY_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
SEP = "|"


@dataclass(frozen=True)
class MetricKeys:
    prefix: str = "alert:"

    @property
    def attempts(self) -> str:
        return f"{self.prefix}metrics:attempts"

    @property
    def throttled(self) -> str:
        return f"{self.prefix}metrics:throttled"

    @property
    def suppressed(self) -> str:
        return f"{self.prefix}metrics:suppressed"

    @property
    def unknown_outcomes(self) -> str:
        return f"{self.prefix}metrics:unknown_outcomes"

    @property
    def latency_buckets(self) -> str:
        return f"{self.prefix}metrics:latency:buckets"

    @property
    def latency_sum(self) -> str:
        return f"{self.prefix}metrics:latency:sum"

    @property
    def poison(self) -> str:
        return f"{self.prefix}{POISON_COUNT_KEY}"

    @property
    def queue_depth(self) -> str:
        return f"{self.prefix}{QUEUE_DEPTH_KEY}"

    @property
    def oldest_pending_since(self) -> str:
        return f"{self.prefix}pending:oldest_since"


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

    def __init__(self, *, client: redis.Redis, prefix: str = "alert:") -> None:
        self._client = client
        self._keys = MetricKeys(prefix)

    def attempt(self, channel: str, outcome: str) -> None:
        self._write(lambda p: p.hincrby(self._keys.attempts, f"{channel}{SEP}{outcome}", 1))

    def throttled(self, channel: str, limit: str) -> None:
        self._write(lambda p: p.hincrby(self._keys.throttled, f"{channel}{SEP}{limit}", 1))

    def suppressed(self, channel: str) -> None:
        self._write(lambda p: p.hincrby(self._keys.suppressed, channel, 1))

    def unknown_outcome(self, channel: str) -> None:
        self._write(lambda p: p.hincrby(self._keys.unknown_outcomes, channel, 1))

    def latency(self, channel: str, seconds: float) -> None:
        def write(p: Any) -> None:
            p.hincrby(self._keys.latency_buckets, f"{channel}{SEP}{bucket_for(seconds)}", 1)
            p.hincrbyfloat(self._keys.latency_sum, channel, max(0.0, seconds))

        self._write(write)

    def _write(self, commands: Callable[[Any], Any]) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            commands(pipe)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - a metric must never fail a delivery
            log.warning("metrics_write_failed", error=type(exc).__name__)


def split_field(field: bytes | str) -> tuple[str, str]:
    text = field.decode() if isinstance(field, bytes) else field
    left, _, right = text.partition(SEP)
    return left, right
