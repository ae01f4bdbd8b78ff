"""The one exception tree of alert_worker, split by what the caller must do.

    AlertWorkerError
    ├── ConfigurationError          bad settings; found at start-up, never mid-delivery
    ├── DeliveryError               one send failed; carries a sanitized, operator-safe ``reason``
    │   ├── TransientDeliveryError  retry later (timeouts, 429, 5xx, SMTP 4xx); may carry ``retry_after``
    │   │   ├── SlowDownError       the provider asked us to slow down for this destination (cooldown)
    │   │   └── OutcomeUnknownError sent, but no answer came: the provider may have the message
    │   └── PermanentDeliveryError  poison now (4xx, SMTP 5xx, invalid recipient)
    │       ├── InvalidInputError       the job's arguments cannot be sent on any attempt
    │       ├── RecipientRejectedError  a permanent answer about the recipient (suppression list)
    │       ├── ChannelMisconfiguredError the channel's own settings are refused: pause it (§7.7)
    │       └── ChannelNotConfiguredError
    ├── ClaimLostError              another job reclaimed the row; this job must stop writing
    ├── MessageIdTakenError         another delivery holds this provider message id (unique in Postgres)
    └── RateLimiterUnavailableError Redis could not be asked; the limiter fails closed

Provider exceptions (smtplib, requests, twilio) are translated into these once, in
``alert_worker.channels``, with ``raise ... from exc``; nothing above the channels sees them.
"""

from __future__ import annotations


class AlertWorkerError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigurationError(AlertWorkerError, ValueError):
    """A setting is missing or malformed; names the variable, never its secret value."""


class DeliveryError(AlertWorkerError):
    """A send attempt failed. ``reason`` is short, sanitized and safe to store and log.

    ``definite``: the provider answered with a refusal (HTTP 4xx/5xx, an SMTP reply before the message body)
    or never received the request (connection refused, DNS failure, connect timeout); such an attempt gives
    its rate-limit slots back (docs/contract.md §7.2). ``False`` whenever the request may have reached it.
    """

    retryable: bool = False

    def __init__(self, reason: str, *, retry_after: float | None = None, definite: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.definite = definite


class TransientDeliveryError(DeliveryError):
    """The provider may accept the same message later."""

    retryable = True


class PermanentDeliveryError(DeliveryError):
    """Sending the same message again cannot succeed."""


class SlowDownError(TransientDeliveryError):
    """A "slow down" for the whole destination (Slack 429, Twilio 429/20429, SMTP 421, 4.7.x): every worker waits."""


class OutcomeUnknownError(TransientDeliveryError):
    """The request may have reached the provider but no answer came; ``reason`` starts ``outcome_unknown:``."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        if not reason.startswith("outcome_unknown:"):
            reason = f"outcome_unknown: {reason}"
        super().__init__(reason, retry_after=retry_after, definite=False)  # the provider may have it


class RecipientRejectedError(PermanentDeliveryError):
    """The provider said this recipient can never receive (unsubscribed, no such user, channel gone)."""


class ChannelMisconfiguredError(PermanentDeliveryError):
    """The provider refused the channel's own settings (credentials, TLS mode, account, sender).

    Nothing was sent (``definite``). The channel is paused for the whole fleet (docs/contract.md §7.7):
    the delivery is deferred, never poisoned, and so is every other one on the channel until the pause
    ends. ``reason`` is short and names the refusal (``smtp_auth_failed 535``).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason, definite=True)


class InvalidInputError(PermanentDeliveryError):
    """The delivery's own arguments are unusable (bad recipient, oversize body...)."""


class ChannelNotConfiguredError(PermanentDeliveryError):
    """The channel's settings are missing on this worker."""

    def __init__(self, channel: str) -> None:
        super().__init__(f"channel_not_configured: {channel}")


class ClaimLostError(AlertWorkerError):
    """The row's claim token changed under us: a newer claimer owns the delivery now."""


class MessageIdTakenError(AlertWorkerError):
    """``mark_delivered`` with a ``provider_message_id`` another delivery already holds (docs/contract.md §7.1)."""


class RateLimiterUnavailableError(AlertWorkerError):
    """The rate limiter could not reach Redis; callers must treat this as a denial."""
