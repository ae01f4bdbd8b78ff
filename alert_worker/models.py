"""Value types shared by every layer: channels, statuses, the row, the message, the job result."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict


class ChannelType(enum.StrEnum):
    EMAIL = "email"
    SLACK = "slack"
    SMS = "sms"


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    DELIVERED = "delivered"
    FAILED = "failed"
    POISON = "poison"


class Outcome(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY_SCHEDULED = "retry_scheduled"
    POISONED = "poisoned"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Message:
    """What a channel sends. ``recipient`` is raw here and must never reach a log."""

    delivery_id: str
    channel: ChannelType
    recipient: str
    subject: str
    body: str
    attempt: int = 0
    carried: tuple[Message, ...] = ()  # held deliveries this message carries, oldest first (§8; ``digest``)


@dataclass(frozen=True)
class SendReceipt:
    """A provider accepted the message."""

    message_id: str | None = None


@dataclass(frozen=True)
class DeliveryRow:
    """One row of ``alert_deliveries`` as the executor needs it."""

    id: str
    channel: str
    status: DeliveryStatus
    attempts: int
    deferrals: int
    recipient_hash: str
    payload: dict[str, Any] | None
    queue: str
    deferred_since: datetime | None
    next_attempt_at: datetime | None
    claim_token: str | None
    db_now: datetime | None = None
    created_at: datetime | None = None  # read only where order matters (carried deliveries, oldest first)


class DeliveryResult(TypedDict):
    """The job's return value: exactly the contract's keys; values are str, bool or None."""

    delivery_id: str
    channel: str
    outcome: str
    success: bool
    status: str
    message_id: str | None
    error: str | None
    retryable: bool
    next_attempt_at: str | None


def make_result(
    *,
    delivery_id: str,
    channel: str,
    outcome: Outcome,
    status: DeliveryStatus,
    success: bool = False,
    message_id: str | None = None,
    error: str | None = None,
    retryable: bool = False,
    next_attempt_at: datetime | None = None,
) -> DeliveryResult:
    return DeliveryResult(
        delivery_id=delivery_id,
        channel=channel,
        outcome=outcome.value,
        success=success,
        status=status.value,
        message_id=message_id,
        error=error,
        retryable=retryable,
        next_attempt_at=iso_utc(next_attempt_at),
    )


def iso_utc(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
