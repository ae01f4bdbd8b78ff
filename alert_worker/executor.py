"""The delivery state machine: claim, check, limit, send, record. Imports no RQ.

Every collaborator is passed in as a Protocol (``alert_worker.ports``: store, poison queue, limiter,
gauge, follow-up scheduler, metrics) with the channel factory, retry and deferral policies and logger,
so the whole state table is tested on fakes. The order of effects is what makes a crash safe: the row is
claimed before anything is sent, the outcome is written before a follow-up job is scheduled, and a row
left ``in_progress`` or ``pending`` with no job is found again by the sweep. A job that finds its row
pending but not yet due schedules a wake-up for the due time instead of leaving it to the sweep.

The recipient's identity (hash, mask, rate-limit bucket) is its normalized form (CONTRACT §6.2).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from alert_worker import delivery
from alert_worker.channels.base import Channel
from alert_worker.delivery import DeliveryRequest
from alert_worker.errors import (
    ClaimLostError,
    ConfigurationError,
    DeliveryError,
    PermanentDeliveryError,
    RateLimiterUnavailableError,
    TransientDeliveryError,
)
from alert_worker.feedback import Feedback, Hold, NoFeedback
from alert_worker.models import ChannelType, DeliveryResult, DeliveryRow, DeliveryStatus, Message, Outcome, make_result
from alert_worker.ports import (
    DeliveryMetrics,
    DeliveryStorePort,
    FollowUp,
    FollowUpScheduler,
    GaugePort,
    LimiterPort,
    NullMetrics,
    PoisonQueuePort,
)
from alert_worker.retry import DeferralPolicy, RetryPolicy
from alert_worker.settings import RateLimits
from alert_worker.store import Claim, NewDelivery
from alert_worker.validation import storable_payload


@dataclass(kw_only=True)
class DeliveryExecutor:
    """Runs one delivery job to one of four outcomes: delivered, retry_scheduled, poisoned, skipped."""

    store: DeliveryStorePort
    poison_queue: PoisonQueuePort
    limiter: LimiterPort
    channel_factory: Callable[[ChannelType], Channel]
    scheduler: FollowUpScheduler
    retry_policy: RetryPolicy
    rate_limits: RateLimits
    queue_depth: GaugePort
    hash_secret: str
    default_webhook_url: str = ""  # SLACK_WEBHOOK_URL: what "" and "default" stand for in a Slack identity
    max_defer_seconds: float = 3600.0
    metrics: DeliveryMetrics = field(default_factory=NullMetrics)
    rand: Callable[[], float] = random.random
    feedback: Feedback = field(default_factory=NoFeedback)  # suppression, cooldowns, unknown outcomes (§6.2)
    close_channels: bool = True  # False: the factory's channels outlive the job (kept per thread, channels.kept)
    logger: Any = field(default_factory=lambda: structlog.get_logger("alert_worker.executor"))

    @property
    def deferral_policy(self) -> DeferralPolicy:
        """Built from the current fields, so a changed budget takes effect (it is a few attributes)."""
        return DeferralPolicy(max_defer_seconds=self.max_defer_seconds, rand=self.rand)

    def identity(self, channel: ChannelType, recipient: Any) -> tuple[str, str]:
        """(recipient_hash, masked recipient) of the normalized recipient: one bucket per real recipient."""
        secret, default = self.hash_secret, self.default_webhook_url
        return delivery.recipient_identity(secret, channel, recipient, default_webhook_url=default)

    # -- entry ---------------------------------------------------------------------------------------
    def run(self, request: DeliveryRequest) -> DeliveryResult:
        rhash, masked = self.identity(request.channel, request.recipient)
        new = NewDelivery(
            id=request.delivery_id,
            channel=request.channel.value,
            recipient_masked=masked,
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
        if not claim.created and row.payload is not None and delivery.differs_from_row(request, row):
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
            return self._poison(claim, log, attempts, delivery.why_unstorable(request))
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
                message = channel.prepare(delivery.message_from_row(row, attempts))
            except PermanentDeliveryError as exc:
                return self._poison(claim, log, attempts, exc.reason)
            held = self._held(claim, log, attempts, channel, message, request.queue)
            if held is not None:
                return held
            bucket, _ = self.identity(channel_type, (row.payload or {}).get("recipient"))
            try:
                decision = self.limiter.acquire(row.channel, bucket, self.rate_limits.for_delivery(channel_type))
            except RateLimiterUnavailableError as exc:
                self.store.release(row.id, claim.token, error="rate_limiter_unavailable")
                log.error("delivery_released", reason="rate_limiter_unavailable", error=str(exc))
                return delivery.waiting_result(row, "rate_limiter_unavailable")
            if not decision.allowed:
                self.metrics.throttled(row.channel, decision.limit_name or "unknown")
                return self._defer(
                    claim, log, attempts, decision.wait_seconds, decision.limit_name or "unknown", request.queue
                )
            log.info("delivery_attempt")
            try:
                receipt = channel.send(message)
            except DeliveryError as exc:
                self.feedback.after_failure(row, channel, message, exc, log=log)
                return self._failed(claim, log, attempts + 1, exc, request.queue)
        finally:
            if self.close_channels:
                channel.close()
        latency = self.store.mark_delivered(row.id, claim.token, attempts=attempts + 1, message_id=receipt.message_id)
        self.feedback.after_delivered(row)
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

    def _held(
        self, claim: Claim, log: Any, attempts: int, channel: Channel, message: Message, queue: str
    ) -> DeliveryResult | None:
        """Provider feedback before any request: suppressed, cooling down, or already sent (§6.2)."""
        row = claim.row
        try:
            hold: Hold | None = self.feedback.hold(row, channel, message)
        except DeliveryError as exc:  # the unknown-outcome look-up could not ask the provider
            return self._failed(claim, log, attempts + 1, exc, queue)
        if hold is None:
            return None
        if hold.kind == "suppressed":
            return self._poison(claim, log, attempts, hold.error or "suppressed")
        if hold.kind == "cooldown":
            self.metrics.throttled(row.channel, "cooldown")
            return self._defer(claim, log, attempts, hold.wait_seconds, "cooldown", queue, error=hold.error)
        self.store.mark_delivered(row.id, claim.token, attempts=attempts, message_id=hold.message_id)
        self.feedback.after_delivered(row)
        self.metrics.attempt(row.channel, Outcome.DELIVERED.value)
        log.info("delivery_found_already_sent", message_id=hold.message_id)
        return make_result(
            delivery_id=row.id,
            channel=row.channel,
            outcome=Outcome.DELIVERED,
            status=DeliveryStatus.DELIVERED,
            success=True,
            message_id=hold.message_id,
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
            self._schedule(row, log, attempts, decision.delay_seconds, "retry", queue, token=claim.token)
            log.warning(
                "delivery_retry_scheduled",
                error=exc.reason,
                delay_seconds=round(decision.delay_seconds, 3),
                next_attempt_at=next_at.isoformat(),
            )
            return delivery.waiting_result(row, exc.reason, next_at)
        return self._poison(claim, log, attempts, exc.reason)

    def _defer(
        self,
        claim: Claim,
        log: Any,
        attempts: int,
        wait_seconds: float,
        limit_name: str,
        queue: str,
        *,
        error: str | None = None,
    ) -> DeliveryResult:
        row = claim.row
        since, now = row.deferred_since, row.db_now
        deferred_for = (now - since).total_seconds() if since is not None and now is not None else 0.0
        decision = self.deferral_policy.after_denial(wait_seconds, deferred_for)
        if not decision.defer:
            return self._poison(claim, log, attempts, f"rate_limited_too_long: {limit_name} limit")
        delay = decision.delay_seconds
        error = error or f"rate_limited: {limit_name} limit"
        next_at, _ = self.store.defer(row.id, claim.token, delay_seconds=delay, error=error)
        self._schedule(row, log, attempts, delay, "defer", queue, token=claim.token)
        self.metrics.deferred(row.channel, limit_name)
        log.info(
            "delivery_deferred", limit=limit_name, delay_seconds=round(delay, 3), next_attempt_at=next_at.isoformat()
        )
        return delivery.waiting_result(row, error, next_at)

    def _schedule(
        self, row: DeliveryRow, log: Any, attempts: int, delay: float, kind: str, queue: str, *, token: str
    ) -> None:
        """Hand the follow-up to RQ on the job's origin queue.

        If that fails the row is still pending with ``next_attempt_at`` set, and the sweep recovers it.
        """
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
                    token=token,
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
        if row is not None and next_at is not None:
            self._wake_when_due(request, row, next_at)
        return make_result(
            delivery_id=request.delivery_id,
            channel=row.channel if row else request.channel.value,
            outcome=Outcome.SKIPPED,
            status=status,
            success=status is DeliveryStatus.DELIVERED,
            next_attempt_at=next_at,
        )

    def _wake_when_due(self, request: DeliveryRequest, row: DeliveryRow, next_at: datetime) -> None:
        """A pending row that is not yet due (clock skew, an early scheduler): schedule a job for its due
        time rather than leave it to the sweep. The id is keyed by the due time and the running job, so it
        is stable for this job and never this job's own id (a wake-up that itself runs early makes another).
        """
        if row.payload is None or row.db_now is None:
            return
        delay = max(0.0, (next_at - row.db_now).total_seconds())
        log = self.logger.bind(
            delivery_id=row.id, channel=row.channel, attempt=row.attempts, recipient_hash=row.recipient_hash
        )
        token = delivery.wake_up_token(next_at, request.job_id)
        self._schedule(row, log, row.attempts, delay, "due", request.queue, token=token)
        log.info("delivery_wake_up_scheduled", delay_seconds=round(delay, 3), next_attempt_at=next_at.isoformat())


__all__ = ["DeliveryExecutor", "DeliveryMetrics", "DeliveryRequest", "FollowUp", "FollowUpScheduler", "NullMetrics"]
