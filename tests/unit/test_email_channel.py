"""The SMTP channel against a real aiosmtpd server: replies, drops, TLS, login, and header safety."""

from __future__ import annotations

import re
import smtplib
import ssl
import subprocess
from pathlib import Path

import pytest

from alert_worker.channels.email import EmailChannel, classify_smtp_error, parse_address
from alert_worker.errors import (
    ChannelNotConfiguredError,
    InvalidInputError,
    OutcomeUnknownError,
    PermanentDeliveryError,
    RecipientRejectedError,
    SlowDownError,
    TransientDeliveryError,
)
from alert_worker.models import ChannelType, Message
from alert_worker.settings import SmtpSettings
from tests.support.smtp import SmtpSink, free_port, running_smtp_sink

TO = "oncall.person@example.com"
PASSWORD = "smtp-canary-password-123"


def _message(recipient: str = TO, subject: str = "Disk full", body: str = "db-1 at 97%") -> Message:
    return Message(
        delivery_id="mail-1", channel=ChannelType.EMAIL, recipient=recipient, subject=subject, body=body, attempt=2
    )


def _channel(
    port: int,
    *,
    security: str = "none",
    user: str = "",
    password: str = "",
    from_address: str = "alerts@example.org",
    tls_context: ssl.SSLContext | None = None,
) -> EmailChannel:
    settings = SmtpSettings("127.0.0.1", port, user, password, from_address, security)
    return EmailChannel(settings=settings, timeout_seconds=5, tls_context=tls_context)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with openssl in a temporary directory."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def client_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    """Trusts exactly our self-signed certificate, with hostname checking on."""
    return ssl.create_default_context(cafile=str(certificate[0]))


def test_plain_send_delivers_one_message_with_a_deterministic_message_id(smtp_sink: SmtpSink) -> None:
    """One recipient in the envelope and the To header; Message-ID from the delivery id (not the attempt)."""
    channel = _channel(smtp_sink.port)
    receipt = channel.send(channel.prepare(_message()))
    [accepted] = smtp_sink.accepted
    assert accepted.rcpt_tos == [TO]
    assert accepted.mail_from == "alerts@example.org"
    assert accepted.message["To"] == TO and accepted.message["Subject"] == "Disk full"
    assert receipt.message_id == accepted.message["Message-ID"]
    assert re.fullmatch(r"<mail-1\.[0-9a-f]{32}@example\.org>", receipt.message_id or "")
    assert accepted.message.get_payload().strip() == "db-1 at 97%"


@pytest.mark.parametrize(
    "subject",
    [
        "Disk full\r\nBcc: victim@example.net",
        "Disk full\nBcc: victim@example.net",
        "Disk full\rBcc: victim@example.net",
        "Disk full\r\n\r\ninjected body",
    ],
    ids=["crlf", "lf", "cr", "blank-line-body-injection"],
)
def test_cr_lf_in_a_subject_never_reaches_a_header(smtp_sink: SmtpSink, subject: str) -> None:
    """Even a message that skipped ``prepare`` is sent with a one-line subject and no extra header."""
    channel = _channel(smtp_sink.port)
    channel.send(_message(subject=subject))  # straight to send: the channel defends itself
    [accepted] = smtp_sink.accepted
    assert accepted.rcpt_tos == [TO]
    assert accepted.message["Bcc"] is None
    assert "\r" not in accepted.message["Subject"] and "\n" not in accepted.message["Subject"]
    assert accepted.message["Subject"].startswith("Disk full ")
    assert b"\r\n\r\ninjected" not in accepted.content.split(b"\r\n\r\n", 1)[0]


def test_prepare_collapses_the_subject_to_one_line() -> None:
    """``prepare`` returns the cleaned subject: whitespace runs become one space."""
    prepared = _channel(25).prepare(_message(subject="  Disk \r\n full\t now "))
    assert prepared.subject == "Disk full now"


@pytest.mark.parametrize(
    "recipient",
    [
        "",
        "no-at-sign",
        "@example.com",
        "user@",
        "a@example.com, b@example.com",
        "a@example.com;b@example.com",
        "Ops <ops@example.com>",
        "ops@example.com\r\nBcc: victim@example.net",
        "ops@example.com\nBcc: x@y.z",
        "a" * 250 + "@example.com",
        "ops@@example.com",
        "(comment)ops@example.com",
    ],
    ids=[
        "empty",
        "no-at",
        "no-local",
        "no-domain",
        "two-comma",
        "two-semicolon",
        "display-name",
        "crlf-header",
        "lf-header",
        "over-254",
        "double-at",
        "comment",
    ],
)
def test_anything_but_exactly_one_bare_address_is_invalid(recipient: str) -> None:
    """Checked with ``email.headerregistry``: one ``user@domain``, nothing more."""
    with pytest.raises(InvalidInputError, match=r"^invalid_recipient"):
        _channel(25).prepare(_message(recipient=recipient))


@pytest.mark.parametrize(
    "recipient",
    ["ops@example.com", "first.last+tag@sub.example.co.uk", "o'brien@example.ie"],
    ids=["plain", "plus-tag-subdomain", "apostrophe"],
)
def test_one_bare_address_is_valid(recipient: str) -> None:
    """Ordinary addresses pass unchanged."""
    assert str(parse_address(recipient).addr_spec) == recipient


def test_a_body_over_one_megabyte_is_invalid_input() -> None:
    """The body size limit is enforced by the channel itself."""
    with pytest.raises(InvalidInputError, match="larger than 1000000 bytes"):
        _channel(25).prepare(_message(body="é" * 500_001))


def test_an_invalid_from_address_is_channel_not_configured_not_a_crash() -> None:
    """A bad ``ALERTS_FROM_EMAIL`` poisons deliveries with a clear reason; constructing never raises."""
    channel = _channel(25, from_address="not an address")
    with pytest.raises(ChannelNotConfiguredError, match=r"^channel_not_configured: email"):
        channel.prepare(_message())


# where the server answers, the reply, expected class, the reason's start
SMTP_REPLIES = [
    (
        "rcpt",
        "550 5.1.1 <oncall.person@example.com>: Recipient address rejected",
        RecipientRejectedError,
        "smtp recipient refused 550 5.1.1",
    ),
    ("rcpt", "553 5.1.3 Bad recipient address syntax", PermanentDeliveryError, "smtp recipient refused 553 5.1.3"),
    ("rcpt", "450 4.2.1 Mailbox busy, try later", TransientDeliveryError, "smtp recipient refused 450 4.2.1"),
    ("rcpt", "452 4.5.3 Too many recipients", TransientDeliveryError, "smtp recipient refused 452 4.5.3"),
    ("data", "451 4.3.0 Mail server temporarily rejected message", TransientDeliveryError, "smtp 451 4.3.0"),
    ("data", "421 4.7.0 Try again later, closing connection", SlowDownError, "smtp"),
    ("data", "554 5.7.1 Message rejected as spam", PermanentDeliveryError, "smtp 554 5.7.1"),
    ("data", "552 5.3.4 Message size exceeds fixed limit", PermanentDeliveryError, "smtp 552 5.3.4"),
    ("data", "550 4.7.1 Greylisted, please retry", SlowDownError, "smtp 550 4.7.1"),
    ("data", "450 5.1.1 mailbox unknown", PermanentDeliveryError, "smtp 450 5.1.1"),  # after DATA: no suppression
    ("data", "451 Local error in processing", TransientDeliveryError, "smtp 451"),
    ("data", "554 Transaction failed", PermanentDeliveryError, "smtp 554"),
]
SMTP_IDS = [
    "rcpt-550-5.1.1",
    "rcpt-553-5.1.3",
    "rcpt-450-4.2.1",
    "rcpt-452-4.5.3",
    "data-451-4.3.0",
    "data-421-closing",
    "data-554-5.7.1",
    "data-552-5.3.4",
    "enhanced-4-wins-over-550",
    "enhanced-5-wins-over-450",
    "data-451-plain",
    "data-554-plain",
]


@pytest.mark.parametrize(("stage", "reply", "error", "reason"), SMTP_REPLIES, ids=SMTP_IDS)
def test_smtp_reply_is_classified(
    smtp_sink: SmtpSink, stage: str, reply: str, error: type[Exception], reason: str
) -> None:
    """4.x.x transient, 5.x.x permanent (the enhanced code decides); the address never appears in the reason."""
    (smtp_sink.rcpt_replies if stage == "rcpt" else smtp_sink.data_replies).append(reply)
    with pytest.raises(error) as caught:
        _channel(smtp_sink.port).send(_message())
    assert type(caught.value) is error
    assert caught.value.reason.startswith(reason)
    assert TO not in caught.value.reason
    assert smtp_sink.accepted == []


def test_connection_dropped_after_end_of_data_is_an_unknown_outcome(smtp_sink: SmtpSink) -> None:
    """The server closes the socket after the body's final dot: the outcome is unknown (transient, retried)."""
    smtp_sink.data_replies.append("DROP")
    with pytest.raises(OutcomeUnknownError, match=r"^outcome_unknown: smtp no reply after end of DATA"):
        _channel(smtp_sink.port).send(_message())
    assert smtp_sink.data_calls == 1 and smtp_sink.accepted == []


def test_refused_connection_is_transient() -> None:
    """No server on the port: a transient connection error naming only the exception class."""
    with pytest.raises(TransientDeliveryError, match=r"^smtp_connection_error: ConnectionRefusedError$"):
        _channel(free_port()).send(_message())


def test_starttls_with_login_delivers(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    """STARTTLS on a verified certificate, then AUTH, then the message."""
    with running_smtp_sink(starttls_context=server_tls, login=("alerts", PASSWORD)) as sink:
        channel = _channel(sink.port, security="starttls", user="alerts", password=PASSWORD, tls_context=client_tls)
        channel.send(_message())
        assert [m.rcpt_tos for m in sink.accepted] == [[TO]]


def test_implicit_tls_with_login_delivers(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    """Implicit TLS (``SMTP_SECURITY=ssl``) with AUTH."""
    with running_smtp_sink(implicit_tls_context=server_tls, login=("alerts", PASSWORD)) as sink:
        channel = _channel(sink.port, security="ssl", user="alerts", password=PASSWORD, tls_context=client_tls)
        channel.send(_message())
        assert [m.rcpt_tos for m in sink.accepted] == [[TO]]


@pytest.mark.parametrize("security", ["starttls", "ssl"], ids=["starttls", "implicit-tls"])
def test_wrong_password_is_permanent_and_names_the_variables_not_the_secret(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext, security: str
) -> None:
    """535 on AUTH: permanent, pointing at SMTP_USER/SMTP_PASSWORD, never quoting the password."""
    tls = {"starttls_context": server_tls} if security == "starttls" else {"implicit_tls_context": server_tls}
    with running_smtp_sink(login=("alerts", "the-right-one"), **tls) as sink:
        channel = _channel(sink.port, security=security, user="alerts", password=PASSWORD, tls_context=client_tls)
        with pytest.raises(PermanentDeliveryError) as caught:
            channel.send(_message())
        assert caught.value.reason.startswith("smtp_auth_failed 535")
        assert "SMTP_PASSWORD" in caught.value.reason and PASSWORD not in caught.value.reason
        assert sink.accepted == []


def test_untrusted_certificate_is_permanent(server_tls: ssl.SSLContext) -> None:
    """A certificate the client does not trust: a configuration problem, not something to retry."""
    untrusting = ssl.create_default_context()  # system CAs only: the self-signed cert is unknown
    with running_smtp_sink(starttls_context=server_tls) as sink:
        with pytest.raises(PermanentDeliveryError, match=r"^smtp_tls_verify_failed"):
            _channel(sink.port, security="starttls", tls_context=untrusting).send(_message())
        assert sink.accepted == []


def _wrapped(outer: Exception, inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except Exception as caught:
        return caught


WRAPPED = [
    (
        _wrapped(OSError("send failed"), smtplib.SMTPDataError(451, b"4.4.1 No answer from host")),
        TransientDeliveryError,
        "smtp 451 4.4.1",
    ),
    (
        _wrapped(RuntimeError("relay failed"), smtplib.SMTPDataError(550, b"5.1.1 user unknown")),
        PermanentDeliveryError,
        "smtp 550 5.1.1",
    ),
    (
        _wrapped(smtplib.SMTPServerDisconnected("gone"), smtplib.SMTPResponseException(421, b"4.3.2 shutting down")),
        SlowDownError,
        "smtp 421 4.3.2",
    ),
    (smtplib.SMTPException("server said: 452 4.2.2 mailbox full"), TransientDeliveryError, "smtp 452 4.2.2"),
    (smtplib.SMTPException("server said: 550 5.1.2 bad destination system"), PermanentDeliveryError, "smtp 550 5.1.2"),
    (smtplib.SMTPResponseException(421, b"Service not available from 10.4.5.6"), SlowDownError, "smtp 421"),
    (smtplib.SMTPResponseException(554, b"relay 192.5.1.1 refused"), PermanentDeliveryError, "smtp 554"),
    (
        smtplib.SMTPRecipientsRefused({TO: (550, b"5.1.1 " + TO.encode() + b" unknown")}),
        RecipientRejectedError,
        "smtp recipient refused 550 5.1.1",
    ),
    (
        smtplib.SMTPSenderRefused(451, b"4.1.8 sender domain has no MX", "alerts@example.org"),
        TransientDeliveryError,
        "smtp sender refused 451 4.1.8",
    ),
    (smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials"), PermanentDeliveryError, "smtp_auth_failed 535"),
    (TimeoutError("timed out"), TransientDeliveryError, "smtp_timeout"),
    (ConnectionResetError(104, "reset"), TransientDeliveryError, "smtp_connection_error: ConnectionResetError"),
    (smtplib.SMTPNotSupportedError("no STARTTLS"), PermanentDeliveryError, "smtp_not_supported"),
]
WRAPPED_IDS = [
    "4xx-inside-OSError",
    "5.1.1-inside-RuntimeError",
    "421-inside-disconnect",
    "4.x.x-quoted-in-text",
    "5.1.x-quoted-in-text",
    "ip-address-is-not-an-enhanced-code",
    "ip-address-in-5xx",
    "recipients-refused",
    "sender-refused-4.1.8",
    "auth",
    "timeout",
    "reset",
    "not-supported",
]


@pytest.mark.parametrize(("exc", "error", "reason"), WRAPPED, ids=WRAPPED_IDS)
def test_classification_finds_the_reply_even_when_wrapped(exc: Exception, error: type[Exception], reason: str) -> None:
    """The SMTP reply decides, wherever it sits in the exception chain; the reason keeps the codes only."""
    result = classify_smtp_error(exc)
    assert type(result) is error
    assert result.reason.startswith(reason)
    assert TO not in result.reason
