"""The delivery state machine: claim, check, limit, send, record. Imports no RQ.

Every collaborator is passed in as a Protocol (``alert_worker.ports``: store, poison queue, limiter,
gauge, follow-up scheduler, metrics) with the channel factory, retry and deferral policies and logger,
so the whole state table is tested on fakes. The order of effects is what makes a crash safe: the row is
claimed before anything is sent, the outcome is written before a follow-up job is scheduled, and a row
left ``in_progress`` or ``pending`` with no job is found again by the sweep. A job that finds its row
pending but not yet due schedules a wake-up for the due time instead of leaving it to the sweep.

The recipient's identity (hash, mask, rate-limit bucket) is its normalized form (docs/contract.md §6.2). The
not-delivered endings (retry, deferral, poison) and their follow-up jobs are in ``alert_worker.setbacks``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import structlog

from alert_worker import delivery
from alert_worker.channels.base import Channel
from alert_worker.delivery import DeliveryRequest
from alert_worker.digest import DEFAULT_MAX_ITEMS
from alert_worker.errors import (
    ChannelMisconfiguredError,
    ClaimLostError,
    ConfigurationError,
    DeliveryError,
    MessageIdTakenError,
    OutcomeUnknownError,
    PermanentDeliveryError,
    RateLimiterUnavailableError,
    TransientDeliveryError,
)
from alert_worker.feedback import Feedback, Hold, NoFeedback, paused_error
from alert_worker.models import (
    ChannelType,
    DeliveryResult,
    DeliveryRow,
    DeliveryStatus,
    Message,
    Outcome,
    make_result,
)
from alert_worker.outcomes import text_sha256
from alert_worker.ports import (
    DeliveryMetrics,
    DeliveryStorePort,
    FollowUp,
    FollowUpScheduler,
    GaugePort,
    LimiterPort,
    NullMetrics,
    PoisonQueuePort,
    SentMarksPort,
)
from alert_worker.rate_limit import RateDecision
from alert_worker.retry import DeferralPolicy, RetryPolicy
from alert_worker.sent_marks import NoSentMarks
from alert_worker.setbacks import SEND_INTERRUPTED_NOTE, Setbacks
from alert_worker.settings import RateLimits
from alert_worker.store import CarriedClaim, Claim, NewDelivery
from alert_worker.validation import storable_payload


@contextmanager
def kept_until_recorded(marks: SentMarksPort, delivery_id: str, message_id: str | None, *, log: Any) -> Iterator[None]:
    """Around the ``delivered`` write of an accepted send: the marker is written first and deleted after.

    A write that fails leaves the marker and logs ``sent_marker_recorded``; one that hangs until the
    process is stopped leaves it too. Either way the next claim finds it and sends nothing.
    """
    kept = marks.record(delivery_id, message_id, log=log)
    try:
        yield
    except BaseException:
        if kept:
            log.warning("sent_marker_recorded", message_id=message_id)
        raise
    marks.clear(delivery_id, log=log)  # after the row says delivered; a leftover one just expires


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
    channel_pause_seconds: float = 300.0  # ALERT_CHANNEL_PAUSE_SECONDS: how long a refused channel waits (§7.7)
    metrics: DeliveryMetrics = field(default_factory=NullMetrics)
    rand: Callable[[], float] = random.random
    feedback: Feedback = field(default_factory=NoFeedback)  # suppression, cooldowns, unknown outcomes (§6.2)
    close_channels: bool = True  # False: the factory's channels outlive the job (kept per thread, channels.kept)
    sent_marks: SentMarksPort = field(default_factory=NoSentMarks)  # acceptances Postgres could not record
    digest: bool = False  # ALERT_DIGEST: a message carries its recipient's held deliveries (§8)
    digest_max_items: int = DEFAULT_MAX_ITEMS  # deliveries in one message, the carrier included
    logger: Any = field(default_factory=lambda: structlog.get_logger("alert_worker.executor"))

    @property
    def deferral_policy(self) -> DeferralPolicy:
        """Built from the current fields, so a changed budget takes effect (it is a few attributes)."""
        return DeferralPolicy(max_defer_seconds=self.max_defer_seconds, rand=self.rand)

    @property
    def setbacks(self) -> Setbacks:
        """Retry, deferral and poison writes (``alert_worker.setbacks``), over the current collaborators."""
        return Setbacks(
            store=self.store,
            poison_queue=self.poison_queue,
            scheduler=self.scheduler,
            retry_policy=self.retry_policy,
            deferral_policy=self.deferral_policy,
            metrics=self.metrics,
            hold_for_recipient=self.digest,
        )

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
                if SEND_INTERRUPTED_NOTE not in getattr(exc, "__notes__", ()):  # not already recorded
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
            self.setbacks.failed(claim, log, attempts, failure, request.queue)
        except Exception as second:  # noqa: BLE001 - the original error is the one to raise
            log.error("delivery_crash_not_recorded", error=type(second).__name__)

    # -- the claimed path ----------------------------------------------------------------------------
    def _run_claimed(self, request: DeliveryRequest, claim: Claim, log: Any) -> DeliveryResult:
        row = claim.row
        attempts = max(request.attempt, row.attempts)  # a reclaim already counted the attempt that sent it
        if (mark := self.sent_marks.find(row.id, log=log)) is not None:  # before anything that could end it
            return self._already_sent(claim, log, attempts, mark.message_id, source="sent_marker", via=mark.via)
        if row.payload is None:
            return self.setbacks.poison(claim, log, attempts, delivery.why_unstorable(request))
        if attempts >= self.retry_policy.max_attempts:
            return self.setbacks.poison(claim, log, attempts, "attempts_exhausted")
        channel_type = ChannelType(row.channel)
        try:
            channel = self.channel_factory(channel_type)
        except PermanentDeliveryError as exc:
            return self.setbacks.poison(claim, log, attempts, exc.reason)
        except ConfigurationError as exc:  # a channel whose settings cannot work, found per delivery
            log.error("channel_misconfigured", error=str(exc))
            return self.setbacks.poison(claim, log, attempts, f"channel_not_configured: {row.channel}")
        try:
            try:
                message = channel.prepare(delivery.message_from_row(row, attempts))
            except PermanentDeliveryError as exc:
                return self.setbacks.poison(claim, log, attempts, exc.reason)
            held = self._held(claim, log, attempts, channel, message, request.queue)
            if held is not None:
                return held
            bucket, _ = self.identity(channel_type, (row.payload or {}).get("recipient"))
            if request.release:  # an operator's `release`: past the limit once, carrying the held ones (§8)
                decision = RateDecision(allowed=True)
                self.metrics.released(row.channel)
                log.info("held_released")
            else:
                try:
                    decision = self.limiter.acquire(row.channel, bucket, self.rate_limits.for_delivery(channel_type))
                except RateLimiterUnavailableError as exc:
                    self.store.release(row.id, claim.token, error="rate_limiter_unavailable")
                    log.error("delivery_released", reason="rate_limiter_unavailable", error=str(exc))
                    return delivery.waiting_result(row, "rate_limiter_unavailable")
            if not decision.allowed:
                self.metrics.throttled(row.channel, decision.limit_name or "unknown")
                return self.setbacks.defer(
                    claim, log, attempts, decision.wait_seconds, decision.limit_name or "unknown", request.queue
                )
            carried: list[CarriedClaim] = []
            if (self.digest or request.release) and claim.others_held:  # the claim looked: one probe, no round trip
                carried, message = self._carry_held(row, bucket, channel, message, log)
            log.info("delivery_attempt", carried=len(carried))
            try:
                try:
                    receipt = channel.send(message)
                except BaseException as exc:  # not accepted: held again; unknown: due on their own, not held
                    if isinstance(exc, OutcomeUnknownError) or not isinstance(exc, DeliveryError):
                        self._carried_outcome_unknown(carried, row, channel, message, log)
                    else:
                        self._release_carried(carried, log)
                    raise
            except DeliveryError as exc:
                self.feedback.after_failure(row, channel, message, exc, log=log)
                self.limiter.after_failure(decision, exc, log=log)  # a definite failure gives its slots back
                if isinstance(exc, ChannelMisconfiguredError):  # the channel is paused: wait with it (§7.7)
                    return self._paused(claim, log, attempts, exc.reason, self.channel_pause_seconds, request.queue)
                return self.setbacks.failed(claim, log, attempts + 1, exc, request.queue)
            except Exception as exc:  # the job timeout (or a bug) cut the send off: the provider may have it
                cut = OutcomeUnknownError(f"send interrupted: {type(exc).__name__}")
                self.feedback.after_failure(row, channel, message, cut, log=log)  # an SMS retry looks up first
                self.setbacks.interrupted(claim, log, attempts + 1, cut, request.queue, cause=exc)
                raise
        finally:
            if self.close_channels:
                channel.close()
        sent_id = receipt.message_id
        if carried:
            return self._delivered_carrying(claim, log, attempts, sent_id, carried)
        with kept_until_recorded(self.sent_marks, row.id, sent_id, log=log):  # a write that fails or hangs
            latency, recorded_id = delivery.mark_delivered(self.store, claim, log, attempts + 1, sent_id)
        self.feedback.after_delivered(row)
        self.metrics.attempt(row.channel, Outcome.DELIVERED.value)
        self.metrics.latency(row.channel, latency)
        log.info("delivery_delivered", latency_seconds=round(latency, 3))
        return delivery.delivered_result(row.id, row.channel, recorded_id)

    # -- alert storms (§8) ---------------------------------------------------------------------------
    def _carry_held(
        self, row: DeliveryRow, bucket: str, channel: Channel, message: Message, log: Any
    ) -> tuple[list[CarriedClaim], Message]:
        """Claim this recipient's held deliveries (oldest first, up to the digest size) into ``message``.

        Handed back: a row whose stored message no longer passes the channel's checks, or that does not fit
        in full (``carried_fit``: held again); one with a sent marker (pending, not held: its own job ends it).
        """
        claimed = self.store.claim_held(
            channel=row.channel, recipient_hash=bucket, exclude_id=row.id, limit=self.digest_max_items - 1
        )
        marked = self.sent_marks.marked([c.row.id for c in claimed], log=log) if claimed else set()
        prepared: list[tuple[CarriedClaim, Message]] = []
        unfit: list[CarriedClaim] = []
        for c in claimed:
            if c.row.id in marked:  # already sent (its marker): its own job ends it, no message carries it
                continue
            try:
                prepared.append((c, channel.prepare(delivery.message_from_row(c.row, c.row.attempts))))
            except DeliveryError:
                unfit.append(c)
        fit = channel.carried_fit(message, [m for _, m in prepared])  # each one shown in full (§8)
        unfit.extend(c for c, _ in prepared[fit:])
        carried = [c for c, _ in prepared[:fit]]
        self._release_carried(unfit, log)
        self._release_carried([c for c in claimed if c.row.id in marked], log, sent_unrecorded=True)
        if carried:
            log.info("delivery_carrying", carried=len(carried), left_held=len(unfit))
        return carried, replace(message, carried=tuple(m for _, m in prepared[:fit]))

    def _carried_outcome_unknown(
        self, carried: list[CarriedClaim], row: DeliveryRow, channel: Channel, message: Message, log: Any
    ) -> None:
        """The carrier's send had an unknown outcome: the carried ones go back pending, due now and not held
        (no other message carries them); their own jobs end them. An SMS one first looks up the digest this
        carrier sent (its own unknown outcome: the carrier's window, the digest's SHA-256, ``carried_by``).
        Never raises: a failure leaves them claimed, for the stuck reclaim to send each on its own."""
        if not carried:
            return
        sent = text_sha256(channel.sent_text(message)) if row.channel == "sms" else None
        try:
            self.store.carried_outcome_unknown(carried, carrier_id=row.id, started_at=row.db_now, sent_sha256=sent)
        except Exception as exc:  # noqa: BLE001 - the send's own outcome is what the job reports
            log.error("carried_release_failed", error=type(exc).__name__, carried=len(carried))
            return
        log.warning("carried_outcome_unknown", carried=len(carried))

    def _release_carried(self, carried: list[CarriedClaim], log: Any, *, sent_unrecorded: bool = False) -> None:
        """Back to held (pending) after a send that was not accepted (``sent_unrecorded``: accepted but not
        written: pending and not held). A failure here leaves them to the dead-worker or stuck reclaim,
        like any ``in_progress`` row. Never raises."""
        if not carried:
            return
        try:
            self.store.release_carried(carried, sent_unrecorded=sent_unrecorded)
        except Exception as exc:  # noqa: BLE001 - the send's own outcome is what the job reports
            log.error("carried_release_failed", error=type(exc).__name__, carried=len(carried))

    def _delivered_carrying(
        self, claim: Claim, log: Any, attempts: int, sent_id: str | None, carried: list[CarriedClaim]
    ) -> DeliveryResult:
        """The provider accepted one message for the carrier and ``carried``: mark every carried id as
        sent (so no crash from here on sends it again), then write all ``delivered`` in one transaction."""
        row = claim.row
        ids = [c.row.id for c in carried]
        self.sent_marks.record_carried(ids, via=row.id, message_id=sent_id, log=log)
        try:
            with kept_until_recorded(self.sent_marks, row.id, sent_id, log=log):  # the carrier's own marker
                latency, lost = self.store.mark_delivered_carrying(
                    row.id, claim.token, attempts=attempts + 1, message_id=sent_id, carried=carried
                )
        except BaseException:  # sent but not recorded: every id keeps a sent marker; its next claim ends it delivered
            self._release_carried(carried, log, sent_unrecorded=True)  # not held: no other message may carry it
            raise
        if lost:  # reclaimed meanwhile: their markers end them delivered via this carrier at their next claim
            log.warning("carried_claim_lost", lost=len(lost))
        written = [i for i in ids if i not in set(lost)]
        self.sent_marks.clear_carried(written, log=log)
        if written:
            self.queue_depth.add(-len(written))
        self.feedback.after_delivered(row)
        self.metrics.attempt(row.channel, Outcome.DELIVERED.value)
        self.metrics.carried(row.channel, len(written))
        self.metrics.latency(row.channel, latency)
        log.info("delivery_delivered", latency_seconds=round(latency, 3), carried=len(written))
        return delivery.delivered_result(row.id, row.channel, sent_id)

    def _held(
        self, claim: Claim, log: Any, attempts: int, channel: Channel, message: Message, queue: str
    ) -> DeliveryResult | None:
        """Provider feedback before any request: suppressed, cooling down, or already sent (§6.2)."""
        row = claim.row
        try:
            hold: Hold | None = self.feedback.hold(row, channel, message)
        except ChannelMisconfiguredError as exc:  # the look-up was refused for the account's own settings
            self.feedback.after_failure(row, channel, message, exc, log=log)
            return self._paused(claim, log, attempts, exc.reason, self.channel_pause_seconds, queue)
        except DeliveryError as exc:  # the unknown-outcome look-up could not ask: nothing was sent
            return self._lookup_failed(claim, log, attempts, exc, queue)
        if hold is None:
            return None
        if hold.kind == "suppressed":
            return self.setbacks.poison(claim, log, attempts, hold.error or "suppressed")
        if hold.kind == "paused":
            self.metrics.throttled(row.channel, "channel_paused")
            return self.setbacks.defer(
                claim, log, attempts, hold.wait_seconds, "channel_paused", queue, error=hold.error
            )
        if hold.kind == "cooldown":
            self.metrics.throttled(row.channel, "cooldown")
            return self.setbacks.defer(claim, log, attempts, hold.wait_seconds, "cooldown", queue, error=hold.error)
        try:
            return self._already_sent(claim, log, attempts, hold.message_id, source="provider_lookup", via=hold.via)
        except MessageIdTakenError:  # another delivery recorded that message meanwhile: not ours, send (§7.1)
            log.warning("provider_lookup_match_taken", message_id=hold.message_id)
            return None

    def _paused(
        self, claim: Claim, log: Any, attempts: int, reason: str, wait_seconds: float, queue: str
    ) -> DeliveryResult:
        """This attempt found the channel's settings refused: deferred with the channel, no attempt used."""
        error = paused_error(reason)
        return self.setbacks.defer(claim, log, attempts, wait_seconds, "channel_paused", queue, error=error)

    def _lookup_failed(self, claim: Claim, log: Any, attempts: int, exc: DeliveryError, queue: str) -> DeliveryResult:
        """A failed unknown-outcome look-up sent nothing: defer (no attempt used), backing off like retries."""
        delays = self.retry_policy.delays
        wait = max(exc.retry_after or 0.0, delays[min(claim.row.deferrals + 1, len(delays)) - 1])
        log.warning("delivery_lookup_failed", error=exc.reason)
        return self.setbacks.defer(claim, log, attempts, wait, "lookup_failed", queue, error=exc.reason)

    def _already_sent(
        self, claim: Claim, log: Any, attempts: int, message_id: str | None, *, source: str, via: str | None = None
    ) -> DeliveryResult:
        """The provider has the message (a sent marker, or Twilio's list): delivered, no request, no new attempt.

        ``via``: the message was another delivery's that carried this one (§8); that row holds the provider id.
        """
        row = claim.row
        recorded_id: str | None = None
        if via is not None:
            message_id = None
            self.store.mark_delivered(row.id, claim.token, attempts=attempts, message_id=None, delivered_via=via)
        else:
            _, recorded_id = delivery.mark_delivered(
                self.store, claim, log, attempts, message_id, guessed=source == "provider_lookup"
            )
        self.feedback.after_delivered(row)
        self.metrics.attempt(row.channel, Outcome.DELIVERED.value)
        log.info("delivery_found_already_sent", message_id=message_id, source=source, delivered_via=via)
        self.sent_marks.clear(row.id, log=log)  # after the row says delivered; a leftover one just expires
        return delivery.delivered_result(row.id, row.channel, recorded_id)

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
            self.setbacks.wake_when_due(request, row, next_at, self.logger)
        return make_result(
            delivery_id=request.delivery_id,
            channel=row.channel if row else request.channel.value,
            outcome=Outcome.SKIPPED,
            status=status,
            success=status is DeliveryStatus.DELIVERED,
            next_attempt_at=next_at,
        )


__all__ = ["DeliveryExecutor", "DeliveryMetrics", "DeliveryRequest", "FollowUp", "FollowUpScheduler", "NullMetrics"]
