"""A delivery job's request, and the message and results built from its row.

Pure: what the executor reads from a job's arguments and a stored payload, kept apart from the state
machine so each stays short. The row always wins over the job's arguments.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from alert_worker.errors import InvalidInputError, MessageIdTakenError
from alert_worker.models import ChannelType, DeliveryResult, DeliveryRow, DeliveryStatus, Message, Outcome, make_result
from alert_worker.redaction import mask_recipient, recipient_hash
from alert_worker.validation import clean_content, clean_recipient, normalize_recipient


@dataclass(frozen=True)
class DeliveryRequest:
    """One job's arguments, already checked by ``validate_job_arguments``."""

    delivery_id: str
    channel: ChannelType
    recipient: Any
    subject: Any
    body: Any
    attempt: int = 0
    queue: str = "alerts"
    job_id: str | None = None  # the running RQ job, so a wake-up it schedules never reuses its id
    release: bool = False  # `alert-worker release`: send past the per-recipient limit once, carrying the held


def delivered_result(delivery_id: str, channel: str, message_id: str | None) -> DeliveryResult:
    return make_result(
        delivery_id=delivery_id,
        channel=channel,
        outcome=Outcome.DELIVERED,
        status=DeliveryStatus.DELIVERED,
        success=True,
        message_id=message_id,
    )


def mark_delivered(
    store: Any, claim: Any, log: Any, attempts: int, mid: str | None, *, guessed: bool = False
) -> tuple[float, str | None]:
    """Record acceptance; (latency, the provider id the row now holds). An id another row holds (§7.1): a
    guessed one (the look-up's) raises ``MessageIdTakenError``; our own acceptance is recorded all the same,
    without the id (``None`` returned, so the job's result says what the row says), and logged."""
    try:
        return float(store.mark_delivered(claim.row.id, claim.token, attempts=attempts, message_id=mid)), mid
    except MessageIdTakenError:
        if guessed:
            raise
        log.error("provider_message_id_taken", message_id=mid)
        return float(store.mark_delivered(claim.row.id, claim.token, attempts=attempts, message_id=None)), None


def waiting_result(row: DeliveryRow, error: str, next_at: datetime | None = None) -> DeliveryResult:
    """The result of a job that left the row pending for a later attempt (retry, deferral, release)."""
    return make_result(
        delivery_id=row.id,
        channel=row.channel,
        outcome=Outcome.RETRY_SCHEDULED,
        status=DeliveryStatus.PENDING,
        error=error,
        retryable=True,
        next_attempt_at=next_at,
    )


def message_from_row(row: DeliveryRow, attempts: int) -> Message:
    """The message to send, built from the stored payload (the row wins over the job's arguments)."""
    payload = row.payload or {}
    recipient = clean_recipient(payload.get("recipient"))
    subject, body = clean_content(payload.get("subject"), payload.get("body"))
    return Message(
        delivery_id=row.id,
        channel=ChannelType(row.channel),
        recipient=recipient,
        subject=subject,
        body=body,
        attempt=attempts,
    )


def why_unstorable(request: DeliveryRequest) -> str:
    """The specific reason a job's arguments could not be stored, for the operator."""
    try:
        clean_recipient(request.recipient)
        clean_content(request.subject, request.body)
    except InvalidInputError as exc:
        return exc.reason
    return "invalid_input: the job's arguments cannot be stored"


def differs_from_row(request: DeliveryRequest, row: DeliveryRow) -> bool:
    """Whether a job's arguments disagree with the stored row (the row wins; the mismatch is logged)."""
    payload = row.payload or {}
    return request.channel.value != row.channel or any(
        (value if value is not None else "") != payload.get(key, "")
        for key, value in (("recipient", request.recipient), ("subject", request.subject), ("body", request.body))
    )


def recipient_identity(
    secret: str, channel: ChannelType, recipient: Any, *, default_webhook_url: str = ""
) -> tuple[str, str]:
    """(``recipient_hash``, masked recipient) of the normalized recipient (docs/contract.md §6.2).

    Every writer of ``alert_deliveries.recipient_hash`` (a job creating its row, ``send``) should use this,
    so variants of one recipient share one hash, one rate-limit bucket and one mask.
    """
    raw = recipient if isinstance(recipient, str) else ""
    normalized = normalize_recipient(channel, raw, default_webhook_url=default_webhook_url)
    return recipient_hash(secret, channel.value, normalized), mask_recipient(channel, normalized)


def wake_up_token(due: datetime, running_job_id: str | None) -> str:
    """What makes a wake-up's job id: the row's due time and a hash of the job that schedules it.

    Stable for one job (asking twice schedules once) and never that job's own id: a wake-up that itself
    runs early carries a different runner hash, so it schedules a new one instead of colliding with itself.
    """
    runner = hashlib.sha256((running_job_id or "").encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{due.astimezone(UTC):%Y%m%dT%H%M%S%f}-{runner}"
