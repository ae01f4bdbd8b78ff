"""What the executor does with provider feedback: suppression, cooldowns, unknown outcomes.

Before a send, ``hold`` says whether the delivery must not be sent now:

    suppressed recipient            poison ``suppressed: <reason>``, no request
    channel paused (§7.7)           defer to the pause's end (``channel_paused: <reason>``), no attempt used
    destination cooling down        defer to the cooldown's end like a rate-limit denial, no attempt used
    SMS whose last outcome unknown  if Twilio has it (§7.1 window, one match): delivered with its SID, no request

After a pause ends, one delivery (the probe) is let through to try the channel's settings; the others
wait for its answer (``cooldown.ChannelPauses``).

After a failed send, ``after_failure`` pauses the channel (``ChannelMisconfiguredError``), starts a
cooldown (``SlowDownError``), suppresses the recipient (``RecipientRejectedError``; never the configured
default webhook, whose rejection is logged ``default_webhook_rejected`` and poisons only its delivery) or
records the unknown outcome (``OutcomeUnknownError``). These are side effects: a failure to record one is
logged and never fails the delivery.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import structlog

from alert_worker.channels.base import Channel
from alert_worker.cooldown import ChannelPauses, Cooldowns, destination_hash, mask_destination
from alert_worker.delivery import recipient_identity
from alert_worker.errors import (
    ChannelMisconfiguredError,
    DeliveryError,
    OutcomeUnknownError,
    RecipientRejectedError,
    SlowDownError,
)
from alert_worker.models import ChannelType, DeliveryRow, Message
from alert_worker.outcomes import UnknownOutcomes, text_sha256
from alert_worker.redaction import mask_recipient
from alert_worker.settings import Settings
from alert_worker.side_effects import SIDE_EFFECT_ERRORS
from alert_worker.suppression import ConnectionSource, SuppressionStore
from alert_worker.validation import SLACK_DEFAULT_RECIPIENTS, clean_content, normalize_recipient

LOOKUP_SKEW = timedelta(seconds=5)  # our database clock against Twilio's, at most (§7.1)
LOOKUP_GRACE = timedelta(seconds=60)  # past the send timeout: a message Twilio created late in the attempt


class FeedbackMetrics(Protocol):
    def suppressed(self, channel: str) -> None: ...
    def unknown_outcome(self, channel: str) -> None: ...


class NullFeedbackMetrics:
    def suppressed(self, channel: str) -> None:
        pass

    def unknown_outcome(self, channel: str) -> None:
        pass


@dataclass(frozen=True)
class Hold:
    """Why a claimed delivery is not sent now."""

    kind: Literal["suppressed", "paused", "cooldown", "already_sent"]
    error: str | None = None
    wait_seconds: float = 0.0
    message_id: str | None = None
    via: str | None = None  # already_sent by the message of this carrier (§8): delivered via it, no id of its own


def paused_error(reason: str) -> str:
    """The row's ``error_message`` while its channel is paused (docs/contract.md §7.7)."""
    return f"channel_paused: {reason}"


def cooldown_error(channel: str, wait_seconds: float) -> str:
    """The row's ``error_message`` while a cooldown holds it: says who asked and for how long."""
    return f"rate_limited: cooldown, the {channel} provider asked to slow down ({wait_seconds:.0f}s left)"


class Feedback(Protocol):
    def hold(self, row: DeliveryRow, channel: Channel, message: Message) -> Hold | None: ...
    def after_failure(
        self, row: DeliveryRow, channel: Channel, message: Message, exc: DeliveryError, *, log: Any
    ) -> None: ...
    def after_delivered(self, row: DeliveryRow) -> None: ...


class NoFeedback:
    """For executors built without provider feedback (unit tests of other behaviour)."""

    def hold(self, row: DeliveryRow, channel: Channel, message: Message) -> Hold | None:
        return None

    def after_failure(
        self, row: DeliveryRow, channel: Channel, message: Message, exc: DeliveryError, *, log: Any
    ) -> None:
        pass

    def after_delivered(self, row: DeliveryRow) -> None:
        pass


class ProviderFeedback:
    """The three policies over their stores; one per job (or per thread-pooled worker)."""

    def __init__(
        self,
        *,
        cooldowns: Cooldowns,
        suppressions: SuppressionStore,
        pauses: ChannelPauses | None = None,
        outcomes: UnknownOutcomes,
        hash_secret: str,
        default_webhook_url: str = "",
        metrics: FeedbackMetrics | None = None,
        logger: Any = None,
        send_timeout_seconds: float = 10.0,
    ) -> None:
        self._cooldowns = cooldowns
        self._pauses = pauses
        self._probes: set[str] = set()  # deliveries trying a paused channel's settings (one fleet-wide)
        self._lock = threading.Lock()  # one ProviderFeedback may serve every thread of a worker
        self._suppressions = suppressions
        self._outcomes = outcomes
        self._secret = hash_secret
        # SLACK_WEBHOOK_URL's identity ("default", "" and the URL itself share it): never suppressed (§7.2)
        self._default_webhook_hash = (
            recipient_identity(hash_secret, ChannelType.SLACK, "default", default_webhook_url=default_webhook_url)[0]
            if default_webhook_url.strip()
            else None
        )
        self._metrics = metrics or NullFeedbackMetrics()
        self._log = logger or structlog.get_logger("alert_worker.feedback")
        self._send_timeout = send_timeout_seconds

    def _destination(self, row: DeliveryRow, channel: Channel, message: Message) -> str:
        return destination_hash(self._secret, row.channel, channel.destination(message))

    # -- before the send -------------------------------------------------------------------------------
    def hold(self, row: DeliveryRow, channel: Channel, message: Message) -> Hold | None:
        """Suppression first (it ends the delivery), then a channel pause, then the cooldown, then the
        unknown-outcome look-up.

        The look-up raises ``TransientDeliveryError`` when Twilio cannot be asked: never resend blindly. The
        configured default webhook is held only by an operator's entry: one a provider's answer added (an
        earlier release did) is ignored (§7.2).
        """
        reason = self._suppressions.reason(
            row.channel, row.recipient_hash, operator_added_only=self._is_default_webhook(row)
        )
        if reason is not None:
            self._metrics.suppressed(row.channel)
            return Hold(kind="suppressed", error=f"suppressed: {reason}")
        paused = self._pauses.admit(row.channel) if self._pauses is not None else None
        if paused is not None:  # no request, so no login with settings the provider refused (§7.7)
            reason, wait, probe = paused
            if not probe:
                return Hold(kind="paused", error=paused_error(reason), wait_seconds=wait)
            with self._lock:
                self._probes.add(row.id)  # this delivery tries the settings for the whole fleet
            self._log.info("channel_pause_probe", delivery_id=row.id, channel=row.channel)
        wait = self._cooldowns.remaining(row.channel, self._destination(row, channel, message))
        if wait > 0:
            return Hold(kind="cooldown", error=cooldown_error(row.channel, wait), wait_seconds=wait)
        if row.channel == "sms":  # also after a replay (attempts 0): the unknown attempt may have gone out
            attempt = self._outcomes.attempt(row.id)
            if attempt is not None:
                started, sent_sha256, carried_by = attempt
                if carried_by is not None and sent_sha256 is not None:  # it rode in a carrier's digest (§8)
                    if self._carrier_match(row, channel, message, started, sent_sha256, carried_by):
                        return Hold(kind="already_sent", via=carried_by)
                    return None
                sid = self._only_match(row, channel, message, started, sent_sha256)
                if sid is not None:
                    return Hold(kind="already_sent", message_id=sid)
        return None

    def _only_match(
        self, row: DeliveryRow, channel: Channel, message: Message, started: datetime, sent_sha256: str | None = None
    ) -> str | None:
        """The one listed message that can be this delivery's (docs/contract.md §7.1), else ``None``: send.

        Created within the unknown attempt's window (from its start less the clock skew to its start plus
        the send timeout and a minute: after a replay days later, nothing), held by no other delivery, and
        the only such one, with no other delivery of the same text to the number that could own it
        (``_rival``).
        """
        earliest, latest = started - LOOKUP_SKEW, started + timedelta(seconds=self._send_timeout) + LOOKUP_GRACE
        if sent_sha256 is None:
            listed = channel.find_sent(message, earliest=earliest, latest=latest)
        else:  # the unknown attempt carried held alerts: its text was the digest's (§8)
            listed = channel.find_sent(message, earliest=earliest, latest=latest, sent_sha256=sent_sha256)
        taken = self._outcomes.taken(row.id, listed) if listed else set()
        ours = [sid for sid in listed if sid not in taken]
        # A digest's text is no other delivery's own text: no rival to ask about (the taken ids are left out).
        if len(ours) == 1 and (sent_sha256 is not None or not self._rival(row, channel, message, earliest, latest)):
            return ours[0]
        if listed:
            self._log.warning(
                "provider_lookup_no_single_match",
                delivery_id=row.id, channel=row.channel, recipient_hash=row.recipient_hash,
                listed=len(listed), taken=len(taken),
            )  # fmt: skip
        return None

    def _carrier_match(
        self, row: DeliveryRow, channel: Channel, message: Message, started: datetime, sent_sha256: str, carrier: str
    ) -> bool:
        """Whether the digest ``carrier`` sent for this delivery with an unknown outcome reached the provider:
        exactly one listed message of that text in the window, held by no delivery or by ``carrier`` itself.
        None, several, or one another delivery holds: ``False``, send alone (a duplicate, never a loss)."""
        earliest, latest = started - LOOKUP_SKEW, started + timedelta(seconds=self._send_timeout) + LOOKUP_GRACE
        listed = channel.find_sent(message, earliest=earliest, latest=latest, sent_sha256=sent_sha256)
        if len(listed) == 1 and not self._outcomes.taken(carrier, listed):  # taken: held by one not the carrier
            return True
        if listed:
            self._log.warning(
                "provider_lookup_no_single_match",
                delivery_id=row.id, channel=row.channel, recipient_hash=row.recipient_hash,
                listed=len(listed), carried_by=carrier,
            )  # fmt: skip
        return False

    def _rival(
        self, row: DeliveryRow, channel: Channel, message: Message, earliest: datetime, latest: datetime
    ) -> bool:
        """Another delivery to this recipient whose text, as sent, is ours and that may own a message of the
        window with an id we do not know (``UnknownOutcomes.rivals``): pending or in progress, or ended
        without a provider id. A text that is gone or cannot be rebuilt counts as ours: send again."""
        text = channel.sent_text(message)
        for payload in self._outcomes.rivals(row.id, earliest=earliest, latest=latest):
            if payload is None:
                return True
            try:
                subject, body = clean_content(payload.get("subject"), payload.get("body"))
                if channel.sent_text(channel.prepare(replace(message, subject=subject, body=body))) == text:
                    return True
            except DeliveryError:
                return True
        return False

    # -- after the send ----------------------------------------------------------------------------------
    def after_failure(
        self, row: DeliveryRow, channel: Channel, message: Message, exc: DeliveryError, *, log: Any
    ) -> None:
        """Pause the channel, start a cooldown, suppress the recipient or remember the unknown outcome;
        never raises."""
        try:
            probing = self._probe_ended(row)
            if isinstance(exc, ChannelMisconfiguredError):
                seconds = self._pauses.pause(row.channel, exc.reason) if self._pauses is not None else 0.0
                log.error("channel_paused", reason=exc.reason, pause_seconds=round(seconds, 3))
                return
            if probing and self._pauses is not None:  # no verdict on the settings: the next delivery tries
                self._pauses.probe_done(row.channel, accepted=False)
            if isinstance(exc, SlowDownError):
                shown = mask_destination(row.channel, channel.destination(message))
                dest = self._destination(row, channel, message)
                seconds = self._cooldowns.start(row.channel, dest, exc.retry_after, shown=shown)
                log.warning("destination_cooldown_started", cooldown_seconds=round(seconds, 3))
            elif isinstance(exc, RecipientRejectedError) and self._is_default_webhook(row):
                log.error("default_webhook_rejected", reason=exc.reason, detail="SLACK_WEBHOOK_URL is not suppressed")
            elif isinstance(exc, RecipientRejectedError):
                recipient = (row.payload or {}).get("recipient", message.recipient)
                added = self._suppressions.add(
                    channel=row.channel,
                    rhash=row.recipient_hash,
                    masked=mask_recipient(row.channel, normalize_recipient(ChannelType(row.channel), recipient)),
                    reason=exc.reason,
                    source_delivery_id=row.id,
                )
                log.warning("recipient_suppressed", reason=exc.reason, added=added)
            elif isinstance(exc, OutcomeUnknownError):
                sent = text_sha256(channel.sent_text(message)) if message.carried else None  # what its look-up matches
                self._outcomes.record(row.id, row.channel, row.db_now, sent_sha256=sent)
                self._metrics.unknown_outcome(row.channel)
                log.warning("delivery_outcome_unknown", error=exc.reason)
        except SIDE_EFFECT_ERRORS as second:  # feedback is a side effect; the failure is recorded anyway
            log.error("provider_feedback_not_recorded", error=type(second).__name__)

    def _is_default_webhook(self, row: DeliveryRow) -> bool:
        """The configured default webhook: the operator's own setting, whose rejection poisons but never suppresses."""
        if row.channel != ChannelType.SLACK.value:
            return False
        raw = str((row.payload or {}).get("recipient") or "")
        return raw.strip() in SLACK_DEFAULT_RECIPIENTS or row.recipient_hash == self._default_webhook_hash

    def _probe_ended(self, row: DeliveryRow) -> bool:
        with self._lock:
            if row.id not in self._probes:
                return False
            self._probes.discard(row.id)
            return True

    def after_delivered(self, row: DeliveryRow) -> None:
        if self._probe_ended(row) and self._pauses is not None:  # the settings work again: lift the probation
            self._pauses.probe_done(row.channel, accepted=True)
            self._log.warning("channel_resumed", delivery_id=row.id, channel=row.channel)
        if row.channel == "sms":
            try:
                self._outcomes.clear(row.id)
            except SIDE_EFFECT_ERRORS as exc:  # a leftover row only costs one look-up on a replay
                self._log.warning("unknown_outcome_not_cleared", error=type(exc).__name__)


def build_feedback(
    settings: Settings, pool: ConnectionSource, client: Any, *, hash_secret: str, metrics: FeedbackMetrics
) -> ProviderFeedback:
    """The production wiring: cooldowns in Redis, suppressions and unknown outcomes in Postgres."""
    return ProviderFeedback(
        cooldowns=Cooldowns(
            client=client,
            key_prefix=settings.redis_key_prefix,
            default_seconds=settings.cooldown_seconds,
            max_seconds=settings.max_retry_delay_seconds,
        ),
        suppressions=SuppressionStore(source=pool),
        pauses=ChannelPauses(
            client=client, key_prefix=settings.redis_key_prefix, pause_seconds=settings.channel_pause_seconds
        ),
        outcomes=UnknownOutcomes(source=pool),
        hash_secret=hash_secret,
        default_webhook_url=settings.slack.default_webhook_url,
        metrics=metrics,
        send_timeout_seconds=settings.send_timeout_seconds,
    )
