"""Hand-written fakes for the executor's collaborators: an in-memory store, a scripted channel and limiter,
a recording scheduler and gauges. The store mirrors DeliveryStore's claim and fencing rules; the contract
test in tests/integration/test_store.py holds the real one to the same behaviour."""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from alert_worker.channels.base import Channel
from alert_worker.channels.email import parse_address
from alert_worker.digest import CARRIED_UNKNOWN_PREFIX, is_held
from alert_worker.errors import ClaimLostError, DeliveryError, MessageIdTakenError, RateLimiterUnavailableError
from alert_worker.models import ChannelType, DeliveryRow, DeliveryStatus, Message, SendReceipt
from alert_worker.rate_limit import Acquisition, RateDecision
from alert_worker.store import CarriedClaim, Claim, NewDelivery


@dataclass
class FakeRow:
    row: DeliveryRow
    error: str | None = None
    message_id: str | None = None
    last_attempt_at: datetime | None = None
    delivered_via: str | None = None


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 28, 3, 0, tzinfo=UTC)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FakeStore:
    """In-memory ``DeliveryStore`` with the same claim conditions and claim-token fencing."""

    def __init__(self, *, clock: FakeClock | None = None, stuck_after_seconds: int = 900) -> None:
        self.clock = clock or FakeClock()
        self.rows: dict[str, FakeRow] = {}
        self.unknown_carried: list[tuple[str, str, datetime | None, str | None]] = []
        self.stuck_after = timedelta(seconds=stuck_after_seconds)
        self.steal_claim_on_write = False  # simulate another job reclaiming mid-delivery

    def add(self, row: DeliveryRow, **extra: Any) -> None:
        self.rows[row.id] = FakeRow(row=row, **extra)

    def claim(self, new: NewDelivery) -> Claim | None:
        now = self.clock.now
        token = str(uuid.uuid4())
        found = self.rows.get(new.id)
        if found is None:
            row = DeliveryRow(
                id=new.id,
                channel=new.channel,
                status=DeliveryStatus.IN_PROGRESS,
                attempts=0,
                deferrals=0,
                recipient_hash=new.recipient_hash,
                payload=new.payload,
                queue=new.queue,
                deferred_since=None,
                next_attempt_at=None,
                claim_token=token,
                db_now=now,
            )
            self.rows[new.id] = FakeRow(row=row, last_attempt_at=now)
            return Claim(row=row, token=token, created=True)
        row = found.row
        due = row.status is DeliveryStatus.PENDING and (row.next_attempt_at is None or row.next_attempt_at <= now)
        stuck = (
            row.status is DeliveryStatus.IN_PROGRESS
            and found.last_attempt_at is not None
            and found.last_attempt_at < now - self.stuck_after
        )
        if not (due or stuck):
            return None
        row = replace(
            row,
            status=DeliveryStatus.IN_PROGRESS,
            claim_token=token,
            db_now=now,
            attempts=row.attempts + (1 if stuck else 0),
        )
        found.row, found.last_attempt_at = row, now
        return Claim(row=row, token=token, created=False)

    def get(self, delivery_id: str) -> DeliveryRow | None:
        found = self.rows.get(delivery_id)
        return None if found is None else replace(found.row, db_now=self.clock.now)

    def _fenced(self, delivery_id: str, token: str) -> FakeRow:
        found = self.rows.get(delivery_id)
        if self.steal_claim_on_write and found is not None:
            found.row = replace(found.row, claim_token=str(uuid.uuid4()))
        if found is None or found.row.claim_token != token or found.row.status is not DeliveryStatus.IN_PROGRESS:
            raise ClaimLostError(delivery_id)
        return found

    def mark_delivered(
        self, delivery_id: str, token: str, *, attempts: int, message_id: str | None, delivered_via: str | None = None
    ) -> float:
        found = self._fenced(delivery_id, token)
        if message_id is not None and any(
            other.message_id == message_id for key, other in self.rows.items() if key != delivery_id
        ):  # the unique index on provider_message_id
            raise MessageIdTakenError(delivery_id)
        found.row = replace(
            found.row,
            status=DeliveryStatus.DELIVERED,
            attempts=attempts,
            payload=None,
            next_attempt_at=None,
            deferred_since=None,
        )
        found.message_id, found.error, found.delivered_via = message_id, None, delivered_via
        return 1.5

    # -- alert storms (§8), as DeliveryStore: held = pending after a recipient-limit or cooldown deferral --------
    def claim_held(self, *, channel: str, recipient_hash: str, exclude_id: str, limit: int) -> list[CarriedClaim]:
        held = [
            f
            for f in self.rows.values()
            if f.row.channel == channel
            and f.row.recipient_hash == recipient_hash
            and f.row.id != exclude_id
            and f.row.payload is not None
            and is_held(f.row.status.value, f.error)
        ]
        claims = []
        for found in sorted(held, key=lambda f: f.row.id)[: max(0, limit)]:
            found.row = replace(found.row, status=DeliveryStatus.IN_PROGRESS, claim_token=str(uuid.uuid4()))
            claims.append(CarriedClaim(row=found.row, token=str(found.row.claim_token)))
        return claims

    def release_carried(self, carried: list[CarriedClaim], *, sent_unrecorded: bool = False) -> int:
        released = 0
        for c in carried:
            found = self.rows[c.row.id]
            if found.row.claim_token == c.token and found.row.status is DeliveryStatus.IN_PROGRESS:
                found.row = replace(found.row, status=DeliveryStatus.PENDING, claim_token=None)
                if sent_unrecorded:
                    found.error = "sent_unrecorded: carried"
                released += 1
        return released

    def carried_outcome_unknown(
        self, carried: list[CarriedClaim], *, carrier_id: str, started_at: datetime | None, sent_sha256: str | None
    ) -> list[str]:
        written = []
        for c in carried:
            found = self.rows[c.row.id]
            if found.row.claim_token == c.token and found.row.status is DeliveryStatus.IN_PROGRESS:
                found.row = replace(found.row, status=DeliveryStatus.PENDING, claim_token=None)
                found.error = CARRIED_UNKNOWN_PREFIX + carrier_id
                written.append(c.row.id)
        self.unknown_carried.extend((i, carrier_id, started_at, sent_sha256) for i in written)
        return written

    def mark_delivered_carrying(
        self, delivery_id: str, token: str, *, attempts: int, message_id: str | None, carried: list[CarriedClaim]
    ) -> tuple[float, list[str]]:
        latency = self.mark_delivered(delivery_id, token, attempts=attempts, message_id=message_id)
        lost = []
        for c in carried:
            found = self.rows[c.row.id]
            if found.row.claim_token != c.token or found.row.status is not DeliveryStatus.IN_PROGRESS:
                lost.append(c.row.id)
                continue
            found.row = replace(
                found.row, status=DeliveryStatus.DELIVERED, attempts=found.row.attempts + 1, payload=None
            )
            found.message_id, found.error, found.delivered_via = None, None, delivery_id
        return latency, lost

    def schedule_retry(
        self, delivery_id: str, token: str, *, attempts: int, delay_seconds: float, error: str
    ) -> tuple[datetime, datetime]:
        found = self._fenced(delivery_id, token)
        next_at = self.clock.now + timedelta(seconds=delay_seconds)
        found.row = replace(
            found.row, status=DeliveryStatus.PENDING, attempts=attempts, next_attempt_at=next_at, deferred_since=None
        )
        found.error = error
        return next_at, self.clock.now

    def defer(
        self, delivery_id: str, token: str, *, delay_seconds: float, error: str, budgeted: bool = True
    ) -> tuple[datetime, datetime]:
        found = self._fenced(delivery_id, token)
        next_at = self.clock.now + timedelta(seconds=delay_seconds)
        found.row = replace(
            found.row,
            status=DeliveryStatus.PENDING,
            deferrals=found.row.deferrals + 1,
            next_attempt_at=next_at,
            deferred_since=(found.row.deferred_since or self.clock.now) if budgeted else None,
        )
        found.error = error
        return next_at, self.clock.now

    def poison(self, delivery_id: str, token: str, *, attempts: int, error: str) -> None:
        found = self._fenced(delivery_id, token)
        found.row = replace(found.row, status=DeliveryStatus.POISON, attempts=attempts, next_attempt_at=None)
        found.error = error

    def release(self, delivery_id: str, token: str, *, error: str) -> None:
        found = self._fenced(delivery_id, token)
        found.row = replace(found.row, status=DeliveryStatus.PENDING, next_attempt_at=None)
        found.error = error


class FakeGauge:
    def __init__(self) -> None:
        self.value = 0
        self.calls: list[int] = []

    def add(self, delta: int) -> None:
        self.calls.append(delta)
        self.value += delta

    def set(self, value: int) -> None:
        self.value = value


class FakePoisonQueue:
    def __init__(self, store: FakeStore, gauge: FakeGauge) -> None:
        self.store, self.gauge = store, gauge

    def park(self, delivery_id: str, token: str, *, attempts: int, error: str) -> None:
        self.store.poison(delivery_id, token, attempts=attempts, error=error)
        self.gauge.add(1)


class FakeLimiter:
    """Answers from a script of decisions (default: allow); an exception in the script is raised."""

    def __init__(self, *decisions: RateDecision | Exception) -> None:
        self.script: deque[RateDecision | Exception] = deque(decisions)
        self.calls: list[tuple[str, str]] = []
        self.released: list[Acquisition] = []

    def acquire(self, channel: str, recipient_hash: str, limits: Any) -> RateDecision:
        self.calls.append((channel, recipient_hash))
        taken = Acquisition(keys=(f"{channel}:{recipient_hash}",), member=f"check-{len(self.calls)}")
        answer = self.script.popleft() if self.script else RateDecision(allowed=True, acquisition=taken)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def after_failure(self, decision: RateDecision, error: DeliveryError, *, log: Any) -> None:
        """Records what the real limiter would give back: a definite failure's acquisition."""
        if error.definite and decision.acquisition is not None:
            self.released.append(decision.acquisition)


def limiter_down() -> RateLimiterUnavailableError:
    return RateLimiterUnavailableError("rate limiter unavailable: ConnectionError")


class FakeChannel(Channel):
    """Accepts, or raises the scripted errors in order; records every message it was asked to send."""

    name = ChannelType.EMAIL
    max_text_chars = 10_000

    def __init__(self, *errors: DeliveryError) -> None:
        self.errors: deque[DeliveryError] = deque(errors)
        self.sent: list[Message] = []
        self.closed = 0

    def prepare(self, message: Message) -> Message:
        parse_address(message.recipient)  # the real e-mail recipient check
        return message

    def send(self, message: Message) -> SendReceipt:
        self.sent.append(message)
        if self.errors:
            raise self.errors.popleft()
        return SendReceipt(message_id=f"<{message.delivery_id}.{message.attempt}@test>")

    def close(self) -> None:
        self.closed += 1


@dataclass
class RecordingScheduler:
    scheduled: list[Any] = field(default_factory=list)
    fail: bool = False

    def schedule(self, follow_up: Any) -> None:
        if self.fail:
            raise ConnectionError("redis down")
        self.scheduled.append(follow_up)
