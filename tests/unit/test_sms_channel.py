"""The Twilio SMS channel against ``responses``: the exact form body sent, and Twilio's answers row by row."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses
from responses import matchers

from alert_worker.channels.sms import MAX_SMS_UNITS, SmsChannel, check_e164, classify_twilio, sms_text
from alert_worker.errors import (
    ChannelMisconfiguredError,
    InvalidInputError,
    PermanentDeliveryError,
    RecipientRejectedError,
    SlowDownError,
    TransientDeliveryError,
)
from alert_worker.models import ChannelType, Message
from alert_worker.settings import TwilioSettings
from alert_worker.validation import TRUNCATION_MARKER, utf16_units

SID = "AC" + "0" * 32
TOKEN = "tok" + "1" * 29
FROM = "+15005550006"
TO = "+15551234567"
URL = f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"


def _message(recipient: str = TO, subject: str = "Disk full", body: str = "db-1 at 97%") -> Message:
    return Message(
        delivery_id="d-1", channel=ChannelType.SMS, recipient=recipient, subject=subject, body=body, attempt=0
    )


@pytest.fixture
def channel() -> Iterator[SmsChannel]:
    sms = SmsChannel(settings=TwilioSettings(SID, TOKEN, FROM), timeout_seconds=3)
    yield sms
    sms.close()


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


def _created(sid: str = "SM" + "a" * 32) -> dict[str, Any]:
    return {"sid": sid, "status": "queued", "to": TO, "from": FROM, "body": "x"}


def _form(body: str, to: str = TO) -> Any:
    return matchers.urlencoded_params_matcher({"To": to, "From": FROM, "Body": body})


def test_send_posts_the_exact_form_and_returns_the_twilio_sid(
    channel: SmsChannel, mocked: responses.RequestsMock
) -> None:
    """To, From and ``"{subject}: {body}"`` are form-encoded; the receipt carries the message SID."""
    mocked.post(URL, json=_created("SM123"), status=201, match=[_form("Disk full: db-1 at 97%")])
    receipt = channel.send(channel.prepare(_message()))
    assert receipt.message_id == "SM123"
    assert mocked.calls[0].request.headers["Authorization"].startswith("Basic ")


def test_send_uses_the_configured_timeout(mocked: responses.RequestsMock) -> None:
    """Twilio's client has no default timeout: ours is every request's total deadline."""
    sms = SmsChannel(settings=TwilioSettings(SID, TOKEN, FROM), timeout_seconds=2.5)
    seen: list[Any] = []

    def callback(request: Any) -> tuple[int, dict[str, str], str]:
        seen.append(request.req_kwargs["timeout"].total)
        return 201, {}, '{"sid": "SM1"}'

    mocked.add_callback(responses.POST, URL, callback=callback)
    sms.send(_message())
    sms.close()
    assert seen == [2.5]


def test_messaging_service_sender_is_sent_as_messaging_service_sid(mocked: responses.RequestsMock) -> None:
    """A ``TWILIO_FROM_NUMBER`` starting with ``MG`` is a Messaging Service, not a phone number."""
    mg = "MG" + "f" * 32
    sms = SmsChannel(settings=TwilioSettings(SID, TOKEN, mg), timeout_seconds=3)
    form = {"To": TO, "MessagingServiceSid": mg, "Body": "Disk full: db-1 at 97%"}
    mocked.post(URL, json=_created(), status=201, match=[matchers.urlencoded_params_matcher(form)])
    sms.send(_message())
    sms.close()


@pytest.mark.parametrize(
    ("subject", "body", "expected"),
    [("Disk full", "db-1", "Disk full: db-1"), ("", "db-1", "db-1"), ("Disk full", "", "Disk full")],
    ids=["subject-and-body", "body-only", "subject-only"],
)
def test_text_joins_subject_and_body_without_dangling_separator(subject: str, body: str, expected: str) -> None:
    """An empty subject or body is a valid alert and leaves no stray ``": "``."""
    assert sms_text(subject, body) == expected


@pytest.mark.parametrize(
    ("body", "char_units"),
    [("x" * 5000, 1), ("😀" * 2000, 2)],
    ids=["ascii", "astral-emoji-two-utf16-units"],
)
def test_over_long_text_is_truncated_to_twilio_limit_with_marker(
    channel: SmsChannel, body: str, char_units: int
) -> None:
    """The whole text stays within 1,600 UTF-16 units and ends with the visible marker."""
    prepared = channel.prepare(_message(body=body))
    text = sms_text(prepared.subject, prepared.body)
    assert text.endswith(TRUNCATION_MARKER)
    assert MAX_SMS_UNITS - char_units < utf16_units(text) <= MAX_SMS_UNITS


def test_text_at_exactly_the_limit_is_not_truncated(channel: SmsChannel) -> None:
    """1,600 units fit: no marker is added."""
    body = "y" * (MAX_SMS_UNITS - len("S: "))
    assert channel.prepare(_message(subject="S", body=body)).body == body


@pytest.mark.parametrize(
    "recipient",
    [
        "",
        "15551234567",
        "+1555",
        "+1234567",
        "+1234567890123456",
        "+0551234567",
        "+1 555 123 4567",
        "+1555123456x",
        "+١٥٥٥١٢٣٤٥٦٧",
        "tel:+15551234567",
    ],
    ids=[
        "empty",
        "no-plus",
        "too-short",
        "seven-digits",
        "sixteen-digits",
        "leading-zero",
        "spaces",
        "letter",
        "arabic-digits",
        "tel-uri",
    ],
)
def test_non_e164_recipient_is_refused_before_any_request(
    channel: SmsChannel, mocked: responses.RequestsMock, recipient: str
) -> None:
    """The number is checked first: no request leaves the machine (``mocked`` has no routes)."""
    with pytest.raises(InvalidInputError, match=r"E\.164"):
        channel.prepare(_message(recipient=recipient))
    with pytest.raises(InvalidInputError, match=r"E\.164"):
        channel.send(_message(recipient=recipient))
    assert len(mocked.calls) == 0


@pytest.mark.parametrize("recipient", ["+12345678", "+123456789012345", "+447700900123"], ids=["8", "15", "uk"])
def test_e164_numbers_of_8_to_15_digits_are_accepted(recipient: str) -> None:
    """``+`` then 8-15 digits is E.164."""
    assert check_e164(recipient) == recipient


# status, Twilio code, Retry-After header, expected class, expected reason
TWILIO_ANSWERS = [
    (429, 20429, "7", SlowDownError, "twilio 20429 too many requests", 7.0),
    (429, None, None, SlowDownError, "twilio 429 too many requests", None),
    (500, 500, None, TransientDeliveryError, "twilio 500 server error", None),
    (503, 503, "30", TransientDeliveryError, "twilio 503 server error", 30.0),
    (400, 21211, None, PermanentDeliveryError, "twilio 21211 invalid 'To' number", None),
    (400, 21610, None, RecipientRejectedError, "twilio 21610 recipient has unsubscribed (STOP)", None),
    (400, 21612, None, PermanentDeliveryError, "twilio 21612 'To' number is not reachable", None),
    (400, 21614, None, RecipientRejectedError, "twilio 21614 'To' number is not SMS-capable", None),
    (400, 21408, None, PermanentDeliveryError, "twilio 21408 permission to send to this region", None),
    (400, 21606, None, PermanentDeliveryError, "twilio 21606 'From' number cannot send", None),
    (400, 21635, None, PermanentDeliveryError, "twilio 21635 'To' number is a landline", None),
    (400, 21999, None, PermanentDeliveryError, "twilio 21999 rejected (HTTP 400)", None),
    (404, 20404, None, ChannelMisconfiguredError, "twilio 20404 account or resource not found (configuration", None),
    (401, 20003, None, ChannelMisconfiguredError, "twilio 20003 authentication failed (configuration error)", None),
    (403, None, None, PermanentDeliveryError, "twilio 403 rejected", None),
]
TWILIO_IDS = [
    "429-20429",
    "429-no-code",
    "500",
    "503-retry-after",
    "21211-invalid-to",
    "21610-unsubscribed",
    "21612-unreachable",
    "21614-not-sms-capable",
    "21408-region",
    "21606-from-not-capable",
    "21635-landline",
    "other-4xx-code",
    "20404-config",
    "20003-auth-config",
    "403-no-code",
]


@pytest.mark.parametrize(("status", "code", "retry_after", "error", "reason", "delay"), TWILIO_ANSWERS, ids=TWILIO_IDS)
def test_twilio_answer_is_classified(
    channel: SmsChannel,
    mocked: responses.RequestsMock,
    status: int,
    code: int | None,
    retry_after: str | None,
    error: type[Exception],
    reason: str,
    delay: float | None,
) -> None:
    """Each Twilio answer maps to transient or permanent, with its code and Retry-After; never the number."""
    body: dict[str, Any] = {"message": f"The 'To' number {TO} is not valid.", "status": status}
    if code is not None:
        body["code"] = code
        body["more_info"] = f"https://www.twilio.com/docs/errors/{code}"
    headers = {"Retry-After": retry_after} if retry_after else {}
    mocked.post(URL, json=body, status=status, headers=headers, match=[_form("Disk full: db-1 at 97%")])
    with pytest.raises(error) as caught:
        channel.send(_message())
    assert type(caught.value) is error
    assert caught.value.reason.startswith(reason)
    assert caught.value.retry_after == delay
    assert TO not in caught.value.reason and "http" not in caught.value.reason
    assert caught.value.__cause__ is not None  # translated with ``raise ... from``


def test_html_5xx_page_is_transient(channel: SmsChannel, mocked: responses.RequestsMock) -> None:
    """A load balancer's HTML error page (no JSON) is still a transient 5xx."""
    mocked.post(URL, body="<html>Bad Gateway</html>", status=502, content_type="text/html")
    with pytest.raises(TransientDeliveryError, match=r"^twilio 502 server error$"):
        channel.send(_message())


def test_rfc9457_problem_body_is_classified_too(channel: SmsChannel, mocked: responses.RequestsMock) -> None:
    """``TwilioServiceException`` does not subclass ``TwilioRestException``; it is caught all the same."""
    problem = {
        "type": "https://www.twilio.com/docs/errors/21211",
        "title": "Invalid 'To' Phone Number",
        "status": 400,
        "code": 21211,
        "detail": f"{TO} is not valid",
    }
    mocked.post(URL, json=problem, status=400)
    with pytest.raises(PermanentDeliveryError, match=r"^twilio 21211 invalid 'To' number$"):
        channel.send(_message())


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (requests.ConnectTimeout(f"timed out connecting to {URL}"), "twilio timeout: ConnectTimeout"),
        (requests.ReadTimeout(f"read timed out {URL}"), "outcome_unknown: twilio no answer after sending: ReadTimeout"),
        (requests.ConnectionError(f"Max retries exceeded with url: {URL}"), "twilio connection error: ConnectionError"),
    ],
    ids=["connect-timeout", "read-timeout", "connection-error"],
)
def test_timeouts_and_connection_errors_are_transient_without_the_url(
    channel: SmsChannel, mocked: responses.RequestsMock, exc: Exception, reason: str
) -> None:
    """Raw ``requests`` errors (whose text holds the URL) become class-name-only transient errors."""
    mocked.post(URL, body=exc)
    with pytest.raises(TransientDeliveryError) as caught:
        channel.send(_message())
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (429, 20429, SlowDownError),
        (401, 20003, ChannelMisconfiguredError),
        (503, 503, TransientDeliveryError),
        (400, 21610, RecipientRejectedError),
        (401, None, ChannelMisconfiguredError),
        (400, 21611, TransientDeliveryError),
        (429, 21611, TransientDeliveryError),
    ],
    ids=["throttled", "auth", "5xx", "unsubscribed", "401-without-code", "21611-queue-full", "21611-on-429"],
)
def test_classify_twilio_is_a_pure_table(status: int, code: int | None, expected: type[Exception]) -> None:
    """The mapping needs no HTTP: status and code decide."""
    assert type(classify_twilio(status, code)) is expected


def test_twilio_is_imported_and_the_client_built_only_on_first_send() -> None:
    """Constructing and preparing never builds a client; ``close`` without a send is harmless."""
    built: list[int] = []
    sms = SmsChannel(
        settings=TwilioSettings(SID, TOKEN, FROM), timeout_seconds=3, client_factory=lambda: built.append(1)
    )
    sms.prepare(_message())
    sms.close()
    assert built == []


def test_twilio_logger_is_quiet_below_warning() -> None:
    """Twilio logs request URLs and headers at INFO; the channel module turns that off."""
    import logging

    assert logging.getLogger("twilio").getEffectiveLevel() >= logging.WARNING
    assert logging.getLogger("twilio.http_client").getEffectiveLevel() >= logging.WARNING


def test_missing_twilio_settings_name_every_variable() -> None:
    """SMS is disabled when any of the three settings is missing, and says which."""
    assert TwilioSettings("", "", "").missing == ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM_NUMBER")
    assert TwilioSettings(SID, "", FROM).missing == ("TWILIO_AUTH_TOKEN",)
    assert TwilioSettings(SID, TOKEN, FROM).missing == ()
