"""How a claimed delivery that was not delivered leaves the executor: retry, deferral or poison.

Each is one fenced write on the row, then, for a retry or a deferral, the follow-up job handed to RQ. The
order is what makes a crash safe: the row is written before the follow-up is scheduled, and a follow-up
that cannot be enqueued leaves a pending row with ``next_attempt_at`` that the sweep finds. A pending row
found not yet due (clock skew, an early scheduler) gets a wake-up job for its due time here too.
Split from ``executor`` so the state machine reads in one sitting; imports no RQ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from alert_worker import delivery
from alert_worker.delivery import DeliveryRequest
from alert_worker.digest import HELD_LIMITS
from alert_worker.errors import DeliveryError, TransientDeliveryError
from alert_worker.models import DeliveryResult, DeliveryRow, DeliveryStatus, Outcome, make_result
from alert_worker.ports import DeliveryMetrics, DeliveryStorePort, FollowUp, FollowUpScheduler, PoisonQueuePort
from alert_worker.retry import DeferralPolicy, RetryPolicy
from alert_worker.side_effects import SIDE_EFFECT_ERRORS
from alert_worker.store import Claim

SEND_INTERRUPTED_NOTE = "alert_worker: this send was recorded as outcome_unknown and retried"


@dataclass(frozen=True, kw_only=True)
class Setbacks:
    """The executor's collaborators for the not-delivered outcomes; built by ``DeliveryExecutor.setbacks``."""

    store: DeliveryStorePort
    poison_queue: PoisonQueuePort
    scheduler: FollowUpScheduler
    retry_policy: RetryPolicy
    deferral_policy: DeferralPolicy
    metrics: DeliveryMetrics
    hold_for_recipient: bool = False  # ALERT_DIGEST on: a per-recipient denial holds, never poisons (§8)

    def failed(self, claim: Claim, log: Any, attempts: int, exc: DeliveryError, queue: str) -> DeliveryResult:
        """A failed attempt: retry with backoff while attempts remain, else poison."""
        row = claim.row
        if isinstance(exc, TransientDeliveryError):
            decision = self.retry_policy.after_transient_failure(attempts, exc.retry_after)
            if not decision.retry:
                return self.poison(claim, log, attempts, f"{decision.reason}: {exc.reason}", retryable=True)
            self.metrics.attempt(row.channel, "transient_failure")
            self.metrics.retried(row.channel, exc.reason)
            next_at, _ = self.store.schedule_retry(
                row.id, claim.token, attempts=attempts, delay_seconds=decision.delay_seconds, error=exc.reason
            )
            self.schedule(row, log, attempts, decision.delay_seconds, "retry", queue, token=claim.token)
            log.warning(
                "delivery_retry_scheduled",
                error=exc.reason,
                delay_seconds=round(decision.delay_seconds, 3),
                next_attempt_at=next_at.isoformat(),
            )
            return delivery.waiting_result(row, exc.reason, next_at)
        return self.poison(claim, log, attempts, exc.reason)

    def interrupted(
        self, claim: Claim, log: Any, attempts: int, cut: DeliveryError, queue: str, *, cause: Exception
    ) -> None:
        """A send cut off by the job timeout or a bug: recorded as ``cut`` (an unknown outcome, §7.1) and
        retried. ``cause`` then carries ``SEND_INTERRUPTED_NOTE``: the caller re-raises it (the job fails
        loudly) and the executor's crash path does not write the row a second time."""
        log.error("delivery_send_interrupted", error=type(cause).__name__, attempts=attempts)
        try:
            self.failed(claim, log, attempts, cut, queue)
        except Exception as second:  # noqa: BLE001 - the original error is the one to raise
            log.error("delivery_crash_not_recorded", error=type(second).__name__)
            return
        cause.add_note(SEND_INTERRUPTED_NOTE)

    def defer(
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
        """A rate-limit denial or a cooldown: put off without an attempt, or poison past the budget."""
        row = claim.row
        since, now = row.deferred_since, row.db_now
        deferred_for = (now - since).total_seconds() if since is not None and now is not None else 0.0
        policy = self.deferral_policy
        held = self.hold_for_recipient and limit_name == "recipient"
        if held:  # the limit's window frees a slot within the hour, and that slot's message carries this one
            policy = replace(policy, max_defer_seconds=math.inf)
        decision = policy.after_denial(wait_seconds, deferred_for)
        if not decision.defer:
            return self.poison(claim, log, attempts, f"rate_limited_too_long: {limit_name} limit")
        delay = decision.delay_seconds
        error = error or f"rate_limited: {limit_name} limit"
        if held:  # the hold's wait is not a deferral run: a later channel-limit or cooldown deferral starts afresh
            next_at, _ = self.store.defer(row.id, claim.token, delay_seconds=delay, error=error, budgeted=False)
        else:
            next_at, _ = self.store.defer(row.id, claim.token, delay_seconds=delay, error=error)
        self.schedule(row, log, attempts, delay, "defer", queue, token=claim.token)
        self.metrics.deferred(row.channel, limit_name)
        log.info(
            "delivery_deferred",
            limit=limit_name,
            held=limit_name in HELD_LIMITS,
            delay_seconds=round(delay, 3),
            next_attempt_at=next_at.isoformat(),
        )
        return delivery.waiting_result(row, error, next_at)

    def poison(self, claim: Claim, log: Any, attempts: int, reason: str, *, retryable: bool = False) -> DeliveryResult:
        """Park the delivery in the poison queue with its reason; the payload stays for a replay."""
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

    def schedule(
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
        except SIDE_EFFECT_ERRORS as exc:  # the row is safe in Postgres; the sweep re-enqueues it
            log.error("follow_up_enqueue_failed", kind=kind, error=type(exc).__name__)

    def wake_when_due(self, request: DeliveryRequest, row: DeliveryRow, next_at: datetime, logger: Any) -> None:
        """A pending row that is not yet due (clock skew, an early scheduler): schedule a job for its due
        time rather than leave it to the sweep. The id is keyed by the due time and the running job, so it
        is stable for this job and never this job's own id (a wake-up that itself runs early makes another).
        """
        if row.payload is None or row.db_now is None:
            return
        delay = max(0.0, (next_at - row.db_now).total_seconds())
        log = logger.bind(
            delivery_id=row.id, channel=row.channel, attempt=row.attempts, recipient_hash=row.recipient_hash
        )
        token = delivery.wake_up_token(next_at, request.job_id)
        self.schedule(row, log, row.attempts, delay, "due", request.queue, token=token)
        log.info("delivery_wake_up_scheduled", delay_seconds=round(delay, 3), next_attempt_at=next_at.isoformat())
