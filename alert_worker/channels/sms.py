"""SMS through Twilio's Messages API, with every answer classified once (``classify_twilio``).

``twilio`` is imported on the first send only (``import twilio.rest`` costs ~150 ms, paid per forked
work-horse otherwise). Its HTTP client gets the configured timeout (its default is none) and a response
hook that remembers ``Retry-After``, since Twilio's exceptions carry no headers. Error texts are built
from the HTTP status and Twilio's numeric code only: Twilio's own messages quote the ``To`` number and
``str()`` of a ``requests`` exception quotes the URL.

    HTTP 429 / code 20429, 21611 queue full, 5xx, timeouts    transient (Retry-After honoured)
    20003 authentication, 20404, 21212 invalid From            permanent, marked as a configuration error
    21211, 21408, 21606, 21610, 21612, 21614, 21635, other 4xx permanent
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import requests

from alert_worker.channels.base import Channel
from alert_worker.channels.http import map_request_errors
from alert_worker.digest import sms_digest
from alert_worker.errors import (
    DeliveryError,
    InvalidInputError,
    PermanentDeliveryError,
    RecipientRejectedError,
    SlowDownError,
    TransientDeliveryError,
)
from alert_worker.models import ChannelType, Message, SendReceipt
from alert_worker.retry import parse_retry_after
from alert_worker.settings import TwilioSettings
from alert_worker.validation import fit_body, is_e164, utf16_units

MAX_SMS_UNITS = 1_600  # Twilio's limit for one message body, counted in UTF-16 code units

TWILIO_ERRORS: dict[int, str] = {
    20429: "too many requests",
    21211: "invalid 'To' number",
    21408: "permission to send to this region is not enabled",
    21606: "'From' number cannot send to this destination",
    21610: "recipient has unsubscribed (STOP)",
    21612: "'To' number is not reachable from this 'From' number",
    21614: "'To' number is not SMS-capable",
    21635: "'To' number is a landline or unreachable",
}
# Errors about the sender's state, not the message: the same request can succeed later.
TRANSIENT_ERRORS: dict[int, str] = {
    21611: "the sender's message queue is full",
}
RECIPIENT_ERRORS = frozenset({21610, 21614})  # unsubscribed (STOP), not SMS-capable: the suppression list
# A message in these states never reached the phone: finding one is no reason not to send again.
NOT_SENT_STATUSES = frozenset({"failed", "undelivered", "canceled"})
LOOKUP_LIMIT = 50
LOOKUP_SKEW = timedelta(seconds=60)  # our database clock against Twilio's
CONFIGURATION_ERRORS: dict[int, str] = {
    20003: "authentication failed",
    20404: "account or resource not found",
    21212: "invalid 'From' number",
}

# The Twilio HTTP client logs request URLs and response headers at INFO.
logging.getLogger("twilio").setLevel(logging.WARNING)


def check_e164(recipient: str) -> str:
    """``+`` then 8-15 digits (no leading zero), checked before any request is made."""
    if not is_e164(recipient):
        raise InvalidInputError("invalid_recipient: expected an E.164 phone number (+ and 8-15 digits)")
    return recipient


def sms_text(subject: str, body: str) -> str:
    """``"{subject}: {body}"``; either part may be empty."""
    if subject and body:
        return f"{subject}: {body}"
    return subject or body


def message_text(message: Message) -> str:
    """The SMS body: one alert, or, when it carries held alerts, the count and their subjects (§8)."""
    if message.carried:
        return sms_digest(message, MAX_SMS_UNITS, utf16_units)
    return sms_text(message.subject, message.body)


def classify_twilio(
    status: int | None, code: int | None, *, retry_after: float | None = None
) -> TransientDeliveryError | PermanentDeliveryError:
    """One Twilio error answer -> our error; the reason carries the code and a fixed description."""
    if code in CONFIGURATION_ERRORS:
        return PermanentDeliveryError(f"twilio {code} {CONFIGURATION_ERRORS[code]} (configuration error)")
    if code in TRANSIENT_ERRORS:
        return TransientDeliveryError(f"twilio {code} {TRANSIENT_ERRORS[code]}", retry_after=retry_after)
    if status == 429 or code == 20429:
        return SlowDownError(f"twilio {code or status} too many requests", retry_after=retry_after)
    if status is not None and status >= 500:
        suffix = f" (code {code})" if code and code != status else ""
        return TransientDeliveryError(f"twilio {status} server error{suffix}", retry_after=retry_after)
    if code in RECIPIENT_ERRORS:
        return RecipientRejectedError(f"twilio {code} {TWILIO_ERRORS[code]}")
    if code in TWILIO_ERRORS:
        return PermanentDeliveryError(f"twilio {code} {TWILIO_ERRORS[code]}")
    if status == 401:
        return PermanentDeliveryError(f"twilio {code or status} authentication failed (configuration error)")
    if code and code != status:
        return PermanentDeliveryError(f"twilio {code} rejected (HTTP {status})")
    return PermanentDeliveryError(f"twilio {status} rejected")


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class SmsChannel(Channel):
    name = ChannelType.SMS
    max_text_chars = MAX_SMS_UNITS

    def __init__(
        self,
        *,
        settings: TwilioSettings,
        timeout_seconds: float,
        client_factory: Any = None,
    ) -> None:
        self._settings = settings
        self._timeout = timeout_seconds
        self._client_factory = client_factory
        self._client: Any = None
        self._http: Any = None
        self._retry_after: str | None = None

    def prepare(self, message: Message) -> Message:
        """Check the number; cut the body so ``"{subject}: {body}"`` fits in one Twilio message."""
        check_e164(message.recipient)
        head = f"{message.subject}: " if message.subject and message.body else message.subject
        body = fit_body(head, message.body, self.max_text_chars, cost=utf16_units)
        return replace(message, body=body)

    def _remember_retry_after(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._retry_after = response.headers.get("Retry-After")

    def _build_client(self) -> Any:
        """Imported and built on first use: most jobs never send an SMS."""
        if self._client_factory is not None:
            return self._client_factory()
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        self._http = TwilioHttpClient(timeout=self._timeout, request_hooks={"response": [self._remember_retry_after]})
        return Client(self._settings.account_sid, self._settings.auth_token, http_client=self._http)

    def send(self, message: Message) -> SendReceipt:
        from twilio.base.exceptions import TwilioException

        check_e164(message.recipient)
        if self._client is None:
            self._client = self._build_client()
        sender = self._settings.from_number
        route = {"messaging_service_sid": sender} if sender.startswith("MG") else {"from_": sender}
        self._retry_after = None
        try:
            with map_request_errors("twilio"):
                created = self._client.messages.create(to=message.recipient, body=message_text(message), **route)
        except TwilioException as exc:
            raise self._classify(exc) from exc
        except ValueError as exc:  # a 2xx whose body is not JSON: the message may have gone out
            raise PermanentDeliveryError("twilio unexpected response (not JSON); not resent") from exc
        sid = getattr(created, "sid", None)
        return SendReceipt(message_id=str(sid) if sid else None)

    def destination(self, message: Message) -> str:
        """The Twilio account and sender: Twilio throttles per account and per sending number."""
        return f"{self._settings.account_sid}:{self._settings.from_number}"

    def find_sent(self, message: Message, since: datetime) -> str | None:
        """The SID of a message with this body to this number from our sender created since ``since``.

        Twilio's ``DateSent`` filter has day granularity and skips messages still queued (no
        ``date_sent`` yet), so the newest messages to the number are listed and ``date_created`` is
        compared here. A failed lookup raises a transient error: never resend blindly.
        """
        from twilio.base.exceptions import TwilioException

        if self._client is None:
            self._client = self._build_client()
        text = message_text(message)
        sender = self._settings.from_number
        service = sender if sender.startswith("MG") else None  # a Messaging Service picks the From number
        try:
            if service:
                found = self._client.messages.list(to=message.recipient, limit=LOOKUP_LIMIT)
            else:
                found = self._client.messages.list(to=message.recipient, from_=sender, limit=LOOKUP_LIMIT)
        except (TwilioException, requests.RequestException, ValueError) as exc:
            raise TransientDeliveryError(f"outcome_unknown: twilio lookup failed: {type(exc).__name__}") from exc
        for sent in found:
            created = getattr(sent, "date_created", None)
            if created is None or created < since - LOOKUP_SKEW:
                continue
            if service and getattr(sent, "messaging_service_sid", None) != service:
                continue
            if getattr(sent, "body", None) == text and getattr(sent, "status", None) not in NOT_SENT_STATUSES:
                return str(sent.sid)
        return None

    def _classify(self, exc: Exception) -> DeliveryError:
        status = _as_int(getattr(exc, "status", None))
        code = _as_int(getattr(exc, "code", None))
        if status is None and code is None:
            return PermanentDeliveryError(f"twilio client error: {type(exc).__name__} (configuration error)")
        error = classify_twilio(status, code, retry_after=parse_retry_after(self._retry_after))
        error.definite = True  # an HTTP error answer: Twilio refused the message (§7.2, its slots go back)
        return error

    def close(self) -> None:
        session = getattr(self._http, "session", None)
        if session is not None:
            session.close()
        self._client = None
        self._http = None
