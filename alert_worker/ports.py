"""The seams of the delivery executor: what it needs from a store, a poison queue, a limiter, a gauge, a
follow-up scheduler and a metrics sink, written as Protocols.

The executor depends on these shapes only, so the in-memory fakes in the tests and the real Postgres,
Redis and RQ parts are interchangeable; one contract test holds the fake store and ``DeliveryStore`` to
the same behaviour. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from alert_worker.errors import DeliveryError
from alert_worker.models import DeliveryRow
from alert_worker.rate_limit import RateDecision
from alert_worker.sent_marks import SentMark
from alert_worker.settings import RateLimit
from alert_worker.store import CarriedClaim, Claim, NewDelivery


class DeliveryStorePort(Protocol):
    """A delivery's row: the claim and every fenced write of the job that holds it."""

    def claim(self, new: NewDelivery) -> Claim | None: ...
    def get(self, delivery_id: str) -> DeliveryRow | None: ...
    def mark_delivered(
        self, delivery_id: str, token: str, *, attempts: int, message_id: str | None, delivered_via: str | None = None
    ) -> float: ...
    def schedule_retry(
        self, delivery_id: str, token: str, *, attempts: int, delay_seconds: float, error: str
    ) -> tuple[datetime, datetime]: ...
    def defer(
        self, delivery_id: str, token: str, *, delay_seconds: float, error: str, budgeted: bool = True
    ) -> tuple[datetime, datetime]: ...
    def release(self, delivery_id: str, token: str, *, error: str) -> None: ...
    def claim_held(self, *, channel: str, recipient_hash: str, exclude_id: str, limit: int) -> list[CarriedClaim]: ...
    def release_carried(self, carried: list[CarriedClaim], *, sent_unrecorded: bool = False) -> int: ...
    def carried_outcome_unknown(
        self, carried: list[CarriedClaim], *, carrier_id: str, started_at: datetime | None, sent_sha256: str | None
    ) -> list[str]: ...
    def mark_delivered_carrying(
        self, delivery_id: str, token: str, *, attempts: int, message_id: str | None, carried: list[CarriedClaim]
    ) -> tuple[float, list[str]]: ...


class SentMarksPort(Protocol):
    """Acceptances Postgres could not record (``alert_worker.sent_marks``); best effort, never raises."""

    def record(self, delivery_id: str, message_id: str | None, *, log: Any) -> bool: ...
    def find(self, delivery_id: str, *, log: Any) -> SentMark | None: ...
    def marked(self, delivery_ids: list[str], *, log: Any) -> set[str]: ...
    def clear(self, delivery_id: str, *, log: Any) -> None: ...
    def record_carried(self, delivery_ids: list[str], *, via: str, message_id: str | None, log: Any) -> None: ...
    def clear_carried(self, delivery_ids: list[str], *, log: Any) -> None: ...


class PoisonQueuePort(Protocol):
    def park(self, delivery_id: str, token: str, *, attempts: int, error: str) -> None: ...


class LimiterPort(Protocol):
    def acquire(self, channel: str, recipient_hash: str, limits: Sequence[RateLimit]) -> RateDecision: ...
    def after_failure(self, decision: RateDecision, error: DeliveryError, *, log: Any) -> None: ...


class GaugePort(Protocol):
    def add(self, delta: int) -> None: ...


@dataclass(frozen=True)
class FollowUp:
    """A job to run again later: a retry, a deferral, or a wake-up for a row that is not yet due."""

    delivery_id: str
    channel: str
    payload: dict[str, str]
    queue: str
    attempt: int
    delay_seconds: float
    kind: str  # "retry" | "defer" | "due"
    token: str  # what makes the job id deterministic: the claim (retry, defer) or the due time (due)


class FollowUpScheduler(Protocol):
    def schedule(self, follow_up: FollowUp) -> None: ...


class DeliveryMetrics(Protocol):
    def attempt(self, channel: str, outcome: str) -> None: ...
    def throttled(self, channel: str, limit: str) -> None: ...
    def latency(self, channel: str, seconds: float) -> None: ...
    def retried(self, channel: str, error: str) -> None: ...
    def deferred(self, channel: str, reason: str) -> None: ...
    def carried(self, channel: str, count: int) -> None: ...
    def released(self, channel: str) -> None: ...


class NullMetrics:
    def attempt(self, channel: str, outcome: str) -> None:
        pass

    def throttled(self, channel: str, limit: str) -> None:
        pass

    def latency(self, channel: str, seconds: float) -> None:
        pass

    def retried(self, channel: str, error: str) -> None:
        pass

    def deferred(self, channel: str, reason: str) -> None:
        pass

    def carried(self, channel: str, count: int) -> None:
        pass

    def released(self, channel: str) -> None:
        pass
