"""Best-effort Redis gauges operators watch: ``alert:poison:count`` and ``alert:queue:depth``.

Postgres is the truth; these are fast approximations reconciled from it at start-up and by every sweep.
A failing gauge update is logged and swallowed: a metric must never fail a delivery.
"""

from __future__ import annotations

import redis
import structlog

from alert_worker.keys import DEFAULT_PREFIX, RedisKeys

log = structlog.get_logger("alert_worker.counters")


class Gauge:
    """One integer in Redis, adjusted by deltas and reset from the database."""

    def __init__(self, *, client: redis.Redis, key: str) -> None:
        self._client = client
        self.key = key

    def add(self, delta: int) -> None:
        try:
            self._client.incrby(self.key, delta)
        except redis.RedisError as exc:
            log.warning("gauge_update_failed", key=self.key, error=type(exc).__name__)

    def set(self, value: int) -> None:
        try:
            self._client.set(self.key, value)
        except redis.RedisError as exc:
            log.warning("gauge_update_failed", key=self.key, error=type(exc).__name__)

    def get(self) -> int | None:
        try:
            raw = self._client.get(self.key)
        except redis.RedisError:
            return None
        return int(raw) if raw is not None else 0


def poison_count(client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> Gauge:
    return Gauge(client=client, key=RedisKeys(prefix).poison_count)


def queue_depth(client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> Gauge:
    return Gauge(client=client, key=RedisKeys(prefix).queue_depth)


def oldest_pending_gauge(client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> Gauge:
    """Creation time (epoch s) of the oldest never-tried pending delivery; feeds the metrics' age."""
    return Gauge(client=client, key=RedisKeys(prefix).oldest_pending_since)
