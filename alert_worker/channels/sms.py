"""SMS through Twilio's Messages API, with every answer classified once (``classify_twilio``).

``twilio`` is imported on the first send only (``import twilio.rest`` costs ~150 ms, paid per forked
work-horse otherwise). Its HTTP client gets the configured timeout (its default is none) and a response
hook that remembers ``Retry-After``, since Twilio's exceptions carry no headers. Error texts are built
from the HTTP status and Twilio's numeric code only: Twilio's own messages quote the ``To`` number and
``str()`` of a ``requests`` exception quotes the URL.

    HTTP 429 / code 20429, 21611 queue full, 5xx, timeouts    transient (Retry-After honoured)
    HTTP 401, 20003 authentication, 20404, 21212 invalid From  the channel's settings: SMS paused (§7.7)
    21211, 21408, 21606, 21610, 21612, 21614, 21635, other 4xx permanent
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import datetime
from typing import Any

import requests

from alert_worker.channel_settings import DEFAULT_TWILIO_API_BASE_URL
from alert_worker.channels.base import Channel
from alert_worker.channels.http import map_request_errors, with_deadline
from alert_worker.digest import sms_digest
from alert_worker.errors import (
    ChannelMisconfiguredError,
    DeliveryError,
    InvalidInputError,
    PermanentDeliveryError,
    RecipientRejectedError,
    SlowDownError,
    TransientDeliveryError,
)
from alert_worker.models import ChannelType, Message, SendReceipt
from alert_worker.outcomes import text_sha256
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
    """One Twilio error answer -> our error; the reason carries the code and a fixed description.

    An answer refusing the account's own settings (HTTP 401, 20003, 20404, 21212) is
    ``ChannelMisconfiguredError``: the SMS channel is paused (docs/contract.md §7.7).
    """
    if code in CONFIGURATION_ERRORS:
        return ChannelMisconfiguredError(f"twilio {code} {CONFIGURATION_ERRORS[code]} (configuration error)")
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
        return ChannelMisconfiguredError(f"twilio {code or status} authentication failed (configuration error)")
    if code and code != status:
        return PermanentDeliveryError(f"twilio {code} rejected (HTTP {status})")
    return PermanentDeliveryError(f"twilio {status} rejected")


def lookup_error(exc: Exception) -> TransientDeliveryError | ChannelMisconfiguredError:
    """A failed unknown-outcome look-up: it sent nothing, so the delivery waits without using an attempt.

    The reason names Twilio's HTTP status and code (``twilio lookup failed: HTTP 500``); an answer refusing
    the account's own settings (401, 20003, 20404) pauses the channel like the same answer to a send.
    """
    status = _as_int(getattr(exc, "status", None))
    code = _as_int(getattr(exc, "code", None))
    if status is None:  # a page that failed to load: TwilioException("Unable to fetch page", response)
        status, code = _page_answer(exc)
    detail = f"HTTP {status}" if status is not None else type(exc).__name__
    if code is not None and code != status:
        detail += f" code {code}"
    if status == 401 or code in CONFIGURATION_ERRORS:
        return ChannelMisconfiguredError(f"twilio lookup refused: {detail} (configuration error)")
    return TransientDeliveryError(f"outcome_unknown: twilio lookup failed: {detail}")


def _page_answer(exc: Exception) -> tuple[int | None, int | None]:
    """HTTP status and Twilio code of the response a list call's ``TwilioException`` carries, if any."""
    for arg in exc.args:
        status = _as_int(getattr(arg, "status_code", None))
        if status is None:
            continue
        try:
            body = json.loads(str(getattr(arg, "text", "") or ""))
        except ValueError:
            body = None
        return status, _as_int(body.get("code")) if isinstance(body, dict) else None
    return None, None


def based_http_client(base_url: str, **kwargs: Any) -> Any:
    """A ``TwilioHttpClient`` sending every request to ``base_url`` (``TWILIO_API_BASE_URL``) instead of
    ``https://api.twilio.com``: sends, look-ups and ``check`` alike. Built on first use (twilio is heavy)."""
    from twilio.http.http_client import TwilioHttpClient

    class BasedHttpClient(TwilioHttpClient):  # type: ignore[misc]  # twilio ships no type hints here
        def request(self, method: str, url: str, *args: Any, **kw: Any) -> Any:
            if url.startswith(DEFAULT_TWILIO_API_BASE_URL + "/"):
                url = base_url + url[len(DEFAULT_TWILIO_API_BASE_URL) :]
            return super().request(method, url, *args, **kw)

    return BasedHttpClient(**kwargs)


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
        from twilio.rest import Client

        self._http = based_http_client(
            self._settings.api_base_url,
            timeout=self._timeout,
            request_hooks={"response": [self._remember_retry_after]},
        )
        with_deadline(self._http.session, self._timeout)  # one deadline for the whole request (§7.1)
        return Client(self._settings.account_sid, self._settings.auth_token, http_client=self._http)

    def check_account(self) -> None:
        """``alert-worker check``: one ``GET /2010-04-01/Accounts/<SID>.json``; sends nothing.

        Raises ``ChannelMisconfiguredError`` when Twilio refuses the credentials or the account, another
        ``DeliveryError`` when it cannot be asked.
        """
        from twilio.base.exceptions import TwilioException

        if self._client is None:
            self._client = self._build_client()
        try:
            with map_request_errors("twilio"):
                self._client.api.v2010.accounts(self._settings.account_sid).fetch()
        except TwilioException as exc:
            raise self._classify(exc) from exc
        except ValueError as exc:  # an answer that is not JSON
            raise TransientDeliveryError("twilio unexpected response (not JSON)") from exc

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

    def sent_text(self, message: Message) -> str:
        return message_text(message)

    def find_sent(
        self, message: Message, *, earliest: datetime, latest: datetime, sent_sha256: str | None = None
    ) -> list[str]:
        """SIDs of messages with this body (or, ``sent_sha256``, a body of that SHA-256: a digest it sent)
        to this number from our sender created in [earliest, latest].

        Twilio's ``DateSent`` filter has day granularity and skips messages still queued (no
        ``date_sent`` yet), so the newest messages to the number are listed and ``date_created`` is
        compared here. Messages that failed never reached the phone and are left out. A failed lookup
        raises a transient error naming Twilio's answer (``lookup_error``): never resend blindly; the
        executor defers the delivery without using an attempt.
        """
        from twilio.base.exceptions import TwilioException

        if self._client is None:
            self._client = self._build_client()
        text = self.sent_text(message)
        sender = self._settings.from_number
        service = sender if sender.startswith("MG") else None  # a Messaging Service picks the From number
        try:
            if service:
                found = self._client.messages.list(to=message.recipient, limit=LOOKUP_LIMIT)
            else:
                found = self._client.messages.list(to=message.recipient, from_=sender, limit=LOOKUP_LIMIT)
        except TwilioException as exc:
            raise lookup_error(exc) from exc
        except (requests.RequestException, ValueError) as exc:
            raise TransientDeliveryError(f"outcome_unknown: twilio lookup failed: {type(exc).__name__}") from exc
        sids: list[str] = []
        for sent in found:
            created = getattr(sent, "date_created", None)
            if created is None or not earliest <= created <= latest:
                continue
            if service and getattr(sent, "messaging_service_sid", None) != service:
                continue
            if not service and getattr(sent, "from_", sender) != sender:
                continue
            if getattr(sent, "to", message.recipient) != message.recipient:
                continue
            body = getattr(sent, "body", None)
            same = body == text if sent_sha256 is None else isinstance(body, str) and text_sha256(body) == sent_sha256
            if same and getattr(sent, "status", None) not in NOT_SENT_STATUSES:
                sids.append(str(sent.sid))
        return sids

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
