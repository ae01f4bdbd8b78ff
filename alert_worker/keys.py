"""Every Redis key this package writes or reads, under one prefix (``ALERT_REDIS_KEY_PREFIX``).

One schema so two modules never spell a key differently; ``RedisKeys("alert:")`` gives the names
CONTRACT §3 and §6 fix. RQ's own keys (queues, registries, the scheduler lock) are RQ's and live in
``rq_jobs``.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "alert:"


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = DEFAULT_PREFIX

    # -- gauges (Postgres is the truth; reconciled by start-up and every sweep) -----------------------
    @property
    def poison_count(self) -> str:
        return f"{self.prefix}poison:count"

    @property
    def queue_depth(self) -> str:
        return f"{self.prefix}queue:depth"

    @property
    def oldest_pending_since(self) -> str:
        return f"{self.prefix}pending:oldest_since"

    # -- coordination ----------------------------------------------------------------------------------
    @property
    def sweep_lock(self) -> str:
        return f"{self.prefix}sweep:lock"

    @property
    def queue_refusing(self) -> str:
        """Set while producers refuse new deliveries (queue-depth hysteresis)."""
        return f"{self.prefix}queue:refusing"

    def worker(self, name: str) -> str:
        """A worker's registration hash (``threads``, ``in_flight``, ``started_at``), §6.1."""
        return f"{self.prefix}worker:{name}"

    def worker_alive(self, name: str) -> str:
        return f"{self.prefix}worker:{name}:alive"

    def cooldown(self, channel: str, destination_hash: str) -> str:
        """A destination that asked us to slow down, §6.2."""
        return f"{self.prefix}cooldown:{channel}:{destination_hash}"

    # -- rate limits ---------------------------------------------------------------------------------
    def rate_limit_channel(self, channel: str) -> str:
        return f"{self.prefix}rl:channel:{channel}"

    def rate_limit_recipient(self, channel: str, recipient_hash: str) -> str:
        return f"{self.prefix}rl:recipient:{channel}:{recipient_hash}"

    def rate_limit(self, name: str) -> str:
        """Any other (global) limit, by its name."""
        return f"{self.prefix}rl:{name}"

    # -- metrics (read by the /metrics exporter) ---------------------------------------------------------
    @property
    def metrics_attempts(self) -> str:
        return f"{self.prefix}metrics:attempts"

    @property
    def metrics_throttled(self) -> str:
        return f"{self.prefix}metrics:throttled"

    @property
    def metrics_latency_buckets(self) -> str:
        return f"{self.prefix}metrics:latency:buckets"

    @property
    def metrics_latency_sum(self) -> str:
        return f"{self.prefix}metrics:latency:sum"
