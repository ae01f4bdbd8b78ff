"""The delivery state machine: claim, check, limit, send, record. Imports no RQ.

Every collaborator is passed in (store, poison queue, limiter, channel factory, follow-up scheduler,
retry policy, gauges, metrics, logger), so the whole state table is tested on fakes. The order of
effects is what makes a crash safe: the row is claimed before anything is sent, the outcome is written
before a follow-up job is scheduled, and a row left ``in_progress`` or ``pending`` with no job is found
again by the sweep.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from alert_worker.channels.base import Channel
from alert_worker.counters import Gauge
from alert_worker.errors import (
    ClaimLostError,
    ConfigurationError,
    DeliveryError,
    InvalidInputError,
    PermanentDeliveryError,
    RateLimiterUnavailableError,
    TransientDeliveryError,
)
from alert_worker.models import (
    ChannelType,
    DeliveryResult,
    DeliveryRow,
    DeliveryStatus,
    Message,
    Outcome,
    make_result,
)
from alert_worker.poison import PoisonQueue
from alert_worker.rate_limit import RateLimiter
from alert_worker.redaction import mask_recipient, recipient_hash
from alert_worker.retry import JITTER_FRACTION, RetryPolicy
from alert_worker.settings import RateLimits
from alert_worker.store import Claim, DeliveryStore, NewDelivery
from alert_worker.validation import clean_content, clean_recipient, storable_payload


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


@dataclass(frozen=True)
class FollowUp:
    """A job to run again later: a retry after a failure or a deferral after a rate-limit denial."""

    delivery_id: str
    channel: str
    payload: dict[str, str]
    queue: str
    attempt: int
    delay_seconds: float
    kind: str  # "retry" | "defer"
    token: str  # the claim that scheduled it: one follow-up per claim, so never scheduled twice


class FollowUpScheduler(Protocol):
    def schedule(self, follow_up: FollowUp) -> None: ...


class DeliveryMetrics(Protocol):
    def attempt(self, channel: str, outcome: str) -> None: ...
    def throttled(self, channel: str, limit: str) -> None: ...
    def latency(self, channel: str, seconds: float) -> None: ...
    def retried(self, channel: str, error: str) -> None: ...
    def deferred(self, channel: str, reason: str) -> None: ...


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


@dataclass
class DeliveryExecutor:
    """Runs one delivery job to one of four outcomes: delivered, retry_scheduled, poisoned, skipped."""

    store: DeliveryStore
    poison_queue: PoisonQueue
    limiter: RateLimiter
    channel_factory: Callable[[ChannelType], Channel]
    scheduler: FollowUpScheduler
    retry_policy: RetryPolicy
    rate_limits: RateLimits
    queue_depth: Gauge
    hash_secret: str
    max_defer_seconds: float = 3600.0
    metrics: DeliveryMetrics = field(default_factory=NullMetrics)
    rand: Callable[[], float] = random.random
    logger: Any = field(default_factory=lambda: structlog.get_logger("alert_worker.executor"))

    # -- entry ---------------------------------------------------------------------------------------
    def run(self, request: DeliveryRequest) -> DeliveryResult:
        raw_recipient = request.recipient if isinstance(request.recipient, str) else ""
        rhash = recipient_hash(self.hash_secret, request.channel.value, raw_recipient)
        new = NewDelivery(
            id=request.delivery_id,
            channel=request.channel.value,
            recipient_masked=mask_recipient(request.channel, raw_recipient),
            recipient_hash=rhash,
            payload=storable_payload(request.recipient, request.subject, request.body),
            queue=request.queue,
        )
        claim = self.store.claim(new)
        if claim is None:
            return self._skipped(request, rhash)
        row = claim.row
        log = self.logger.bind(
            delivery_id=row.id,
            channel=row.channel,
            attempt=max(request.attempt, row.attempts) + 1,
            recipient_hash=row.recipient_hash,
        )
        log.info("delivery_claimed", created=claim.created, queue=request.queue)
        if not claim.created and row.payload is not None and _differs(request, row):
            log.warning("delivery_arguments_mismatch", detail="the stored row wins over the job's arguments")
        result: DeliveryResult | None = None
        try:
            try:
                result = self._run_claimed(request, claim, log)
            except ClaimLostError:
                raise
            except Exception as exc:
                self._hand_back_after_crash(request, claim, log, exc)
                raise
        except ClaimLostError:
            log.error("delivery_claim_lost", detail="another job reclaimed this delivery; not writing")
            current = self.store.get(row.id)
            status = current.status if current else DeliveryStatus.IN_PROGRESS
            result = make_result(
                delivery_id=row.id,
                channel=row.channel,
                outcome=Outcome.SKIPPED,
                status=status,
                success=status is DeliveryStatus.DELIVERED,
                error="claim_lost",
            )
        finally:
            self._adjust_queue_depth(claim, result)
        return result

    def _adjust_queue_depth(self, claim: Claim, result: DeliveryResult | None) -> None:
        """+1 for a row this job created, -1 for a row it ended: one Redis call, none when they cancel."""
        ended = result is not None and result["outcome"] in (Outcome.DELIVERED, Outcome.POISONED)
        delta = int(claim.created) - int(ended)
        if delta:
            self.queue_depth.add(delta)

    def _hand_back_after_crash(self, request: DeliveryRequest, claim: Claim, log: Any, exc: Exception) -> None:
        """An unexpected error (a bug, a job timeout, a database blip) after the claim.

        Rather than leave the row claimed until ``ALERT_STUCK_AFTER_SECONDS``, count the attempt (the
        provider may have been reached) and retry with backoff, or poison on the last attempt. The job
        still fails loudly: the caller re-raises. If this write fails too, the stuck reclaim recovers it.
        """
        attempts = max(request.attempt, claim.row.attempts) + 1
        log.error("delivery_crashed", error=type(exc).__name__, attempts=attempts)
        failure = TransientDeliveryError(f"worker_error: {type(exc).__name__}")
        try:
            self._failed(claim, log, attempts, failure, request.queue)
        except Exception as second:  # noqa: BLE001 - the original error is the one to raise
            log.error("delivery_crash_not_recorded", error=type(second).__name__)

    # -- the claimed path ----------------------------------------------------------------------------
    def _run_claimed(self, request: DeliveryRequest, claim: Claim, log: Any) -> DeliveryResult:
        row = claim.row
        attempts = max(request.attempt, row.attempts)
        if row.payload is None:
            return self._poison(claim, log, attempts, _why_unstorable(request))
        if attempts >= self.retry_policy.max_attempts:
            return self._poison(claim, log, attempts, "attempts_exhausted")
        channel_type = ChannelType(row.channel)
        try:
            channel = self.channel_factory(channel_type)
        except PermanentDeliveryError as exc:
            return self._poison(claim, log, attempts, exc.reason)
        except ConfigurationError as exc:  # a channel whose settings cannot work, found per delivery
            log.error("channel_misconfigured", error=str(exc))
            return self._poison(claim, log, attempts, f"channel_not_configured: {row.channel}")
        try:
            try:
                message = channel.prepare(_message(row, attempts))
            except PermanentDeliveryError as exc:
                return self._poison(claim, log, attempts, exc.reason)
            try:
                decision = self.limiter.acquire(
                    row.channel, row.recipient_hash, self.rate_limits.for_delivery(channel_type)
                )
            except RateLimiterUnavailableError as exc:
                self.store.release(row.id, claim.token, error="rate_limiter_unavailable")
                log.error("delivery_released", reason="rate_limiter_unavailable", error=str(exc))
                return _waiting(row, "rate_limiter_unavailable")
            if not decision.allowed:
                self.metrics.throttled(row.channel, decision.limit_name or "unknown")
                return self._defer(
                    claim, log, attempts, decision.wait_seconds, decision.limit_name or "unknown", request.queue
                )
            log.info("delivery_attempt")
            try:
                receipt = channel.send(message)
            except DeliveryError as exc:
                return self._failed(claim, log, attempts + 1, exc, request.queue)
        finally:
            channel.close()
        latency = self.store.mark_delivered(row.id, claim.token, attempts=attempts + 1, message_id=receipt.message_id)
        self.metrics.attempt(row.channel, Outcome.DELIVERED.value)
        self.metrics.latency(row.channel, latency)
        log.info("delivery_delivered", latency_seconds=round(latency, 3))
        return make_result(
            delivery_id=row.id,
            channel=row.channel,
            outcome=Outcome.DELIVERED,
            status=DeliveryStatus.DELIVERED,
            success=True,
            message_id=receipt.message_id,
        )

    def _failed(self, claim: Claim, log: Any, attempts: int, exc: DeliveryError, queue: str) -> DeliveryResult:
        row = claim.row
        if isinstance(exc, TransientDeliveryError):
            decision = self.retry_policy.after_transient_failure(attempts, exc.retry_after)
            if not decision.retry:
                return self._poison(claim, log, attempts, f"{decision.reason}: {exc.reason}", retryable=True)
            self.metrics.attempt(row.channel, "transient_failure")
            self.metrics.retried(row.channel, exc.reason)
            next_at, _ = self.store.schedule_retry(
                row.id, claim.token, attempts=attempts, delay_seconds=decision.delay_seconds, error=exc.reason
            )
            self._schedule(claim, log, attempts, decision.delay_seconds, "retry", queue)
            log.warning(
                "delivery_retry_scheduled",
                error=exc.reason,
                delay_seconds=round(decision.delay_seconds, 3),
                next_attempt_at=next_at.isoformat(),
            )
            return _waiting(row, exc.reason, next_at)
        return self._poison(claim, log, attempts, exc.reason)

    def _defer(
        self, claim: Claim, log: Any, attempts: int, wait_seconds: float, limit_name: str, queue: str
    ) -> DeliveryResult:
        row = claim.row
        delay = wait_seconds + self.rand() * max(1.0, JITTER_FRACTION * wait_seconds)
        now = row.db_now
        since = row.deferred_since or now
        if now is not None and since is not None:
            deferred_for = (now + timedelta(seconds=delay) - since).total_seconds()
            if deferred_for > self.max_defer_seconds:
                return self._poison(claim, log, attempts, f"rate_limited_too_long: {limit_name} limit")
        error = f"rate_limited: {limit_name} limit"
        next_at, _ = self.store.defer(row.id, claim.token, delay_seconds=delay, error=error)
        self._schedule(claim, log, attempts, delay, "defer", queue)
        self.metrics.deferred(row.channel, limit_name)
        log.info(
            "delivery_deferred", limit=limit_name, delay_seconds=round(delay, 3), next_attempt_at=next_at.isoformat()
        )
        return _waiting(row, error, next_at)

    def _schedule(self, claim: Claim, log: Any, attempts: int, delay: float, kind: str, queue: str) -> None:
        """Hand the follow-up to RQ on the job's origin queue.

        If that fails the row is still pending with ``next_attempt_at`` set, and the sweep recovers it.
        """
        row = claim.row
        assert row.payload is not None
        try:
            self.scheduler.schedule(
                FollowUp(
                    delivery_id=row.id,
                    channel=row.channel,
                    payload=dict(row.payload),
                    queue=queue,
                    attempt=attempts,
                    delay_seconds=delay,
                    kind=kind,
                    token=claim.token,
                )
            )
        except Exception as exc:  # noqa: BLE001 - the row is safe in Postgres; the sweep re-enqueues it
            log.error("follow_up_enqueue_failed", kind=kind, error=type(exc).__name__)

    def _poison(self, claim: Claim, log: Any, attempts: int, reason: str, *, retryable: bool = False) -> DeliveryResult:
        row = claim.row
        self.poison_queue.park(row.id, claim.token, attempts=attempts, error=reason)
        self.metrics.attempt(row.channel, Outcome.POISONED.value)
        log.error("delivery_poisoned", error=reason, attempts=attempts)
        return make_result(
            delivery_id=row.id,
            channel=row.channel,
            outcome=Outcome.POISONED,
            status=DeliveryStatus.POISON,
            error=reason,
            retryable=retryable,
        )

    def _skipped(self, request: DeliveryRequest, rhash: str) -> DeliveryResult:
        row = self.store.get(request.delivery_id)
        status = row.status if row else DeliveryStatus.PENDING
        reason = {
            DeliveryStatus.PENDING: "not_due",
            DeliveryStatus.IN_PROGRESS: "in_progress_elsewhere",
        }.get(status, f"already_{status.value}")
        self.logger.info(
            "delivery_skipped",
            delivery_id=request.delivery_id,
            channel=row.channel if row else request.channel.value,
            attempt=request.attempt,
            recipient_hash=row.recipient_hash if row else rhash,
            reason=reason,
        )
        next_at: datetime | None = row.next_attempt_at if row and status is DeliveryStatus.PENDING else None
        return make_result(
            delivery_id=request.delivery_id,
            channel=row.channel if row else request.channel.value,
            outcome=Outcome.SKIPPED,
            status=status,
            success=status is DeliveryStatus.DELIVERED,
            next_attempt_at=next_at,
        )


def _waiting(row: DeliveryRow, error: str, next_at: datetime | None = None) -> DeliveryResult:
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


def _message(row: DeliveryRow, attempts: int) -> Message:
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


def _why_unstorable(request: DeliveryRequest) -> str:
    """The specific reason a job's arguments could not be stored, for the operator."""
    try:
        clean_recipient(request.recipient)
        clean_content(request.subject, request.body)
    except InvalidInputError as exc:
        return exc.reason
    return "invalid_input: the job's arguments cannot be stored"


def _differs(request: DeliveryRequest, row: DeliveryRow) -> bool:
    payload = row.payload or {}
    return request.channel.value != row.channel or any(
        (value if value is not None else "") != payload.get(key, "")
        for key, value in (("recipient", request.recipient), ("subject", request.subject), ("body", request.body))
    )
