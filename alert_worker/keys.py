"""Every Redis key this package writes or reads, under one prefix (``ALERT_REDIS_KEY_PREFIX``).

One schema so two modules never spell a key differently; ``RedisKeys("alert:")`` gives the names
docs/contract.md §3 and §6 fix. RQ's own keys (queues, registries) are RQ's and live in ``rq_jobs``; the two an
operator command reads without importing rq are written out below and pinned by tests to RQ's values.
A unit test fails if another package module spells a key itself.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

DEFAULT_PREFIX = "alert:"

RQ_WORKER_KEY_PREFIX = "rq:worker:"  # rq.worker.BaseWorker.redis_worker_namespace_prefix (pinned by a test)
RQ_SCHEDULER_LOCK_KEY = "rq:scheduler-lock:{queue}"  # rq.scheduler.RQScheduler.get_locking_key (pinned)
_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]{1,80}")


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

    def scheduler_missing_since(self, queue: str) -> str:
        """When (Redis server time) no RQ scheduler lock for ``queue`` was first seen, §7.5; absent while held."""
        return f"{self.prefix}scheduler:missing_since:{queue}"

    @property
    def queue_refusing(self) -> str:
        """Set while producers refuse new deliveries (queue-depth hysteresis)."""
        return f"{self.prefix}queue:refusing"

    def worker(self, name: str) -> str:
        """A worker's registration hash (``threads``, ``in_flight``, ``started_at``), §6.1."""
        return f"{self.prefix}worker:{name}"

    def worker_alive(self, name: str) -> str:
        return f"{self.prefix}worker:{name}:alive"

    @property
    def workers_pattern(self) -> str:
        """``SCAN MATCH`` for every worker key (registrations and alive keys)."""
        return f"{self.prefix}worker:*"

    def worker_name(self, key: str) -> str | None:
        """The worker a registration key names; ``None`` for an alive key or any other key."""
        base = f"{self.prefix}worker:"
        if not key.startswith(base) or key.endswith(":alive"):
            return None
        return key[len(base) :]

    def cooldown(self, channel: str, destination_hash: str) -> str:
        """A destination that asked us to slow down, §6.2."""
        return f"{self.prefix}cooldown:{channel}:{destination_hash}"

    def cooldown_parts(self, key: str) -> tuple[str, str] | None:
        """(channel, destination hash) of a cooldown key; ``None`` for any other key."""
        base = f"{self.prefix}cooldown:"
        if not key.startswith(base):
            return None
        channel, sep, dest_hash = key[len(base) :].partition(":")
        return (channel, dest_hash) if sep and channel and dest_hash else None

    @property
    def cooldowns_pattern(self) -> str:
        """``SCAN MATCH`` for active cooldowns (they expire by TTL, so every key found is active)."""
        return f"{self.prefix}cooldown:*"

    def paused(self, channel: str) -> str:
        """A channel whose own settings the provider refused: paused fleet-wide, holds the reason (§7.7)."""
        return f"{self.prefix}paused:{channel}"

    def pause_probation(self, channel: str) -> str:
        """After a pause ends: only the delivery holding ``pause_probe`` may try the settings (holds the reason)."""
        return f"{self.prefix}pause_probation:{channel}"

    def pause_probe(self, channel: str) -> str:
        """Taken (``SET NX``) by the one delivery that tries a channel's settings again after its pause."""
        return f"{self.prefix}pause_probe:{channel}"

    def sent(self, delivery_id: str) -> str:
        """A provider's acceptance Postgres could not record (``sent_marks``); other ids by a SHA-256 prefix."""
        if _PLAIN_ID.fullmatch(delivery_id):
            return f"{self.prefix}sent:{delivery_id}"
        digest = hashlib.sha256(delivery_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"{self.prefix}sent:#{digest}"  # '#' is never in a plain id, so the two forms cannot collide

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
    def metrics_deferrals(self) -> str:
        return f"{self.prefix}metrics:deferrals"

    @property
    def metrics_retries(self) -> str:
        return f"{self.prefix}metrics:retries"

    @property
    def metrics_suppressed(self) -> str:
        return f"{self.prefix}metrics:suppressed"

    @property
    def metrics_unknown_outcomes(self) -> str:
        return f"{self.prefix}metrics:unknown_outcomes"

    @property
    def metrics_carried(self) -> str:
        return f"{self.prefix}metrics:carried"

    @property
    def metrics_released(self) -> str:
        return f"{self.prefix}metrics:released"

    @property
    def metrics_latency_buckets(self) -> str:
        return f"{self.prefix}metrics:latency:buckets"

    @property
    def metrics_latency_sum(self) -> str:
        return f"{self.prefix}metrics:latency:sum"
