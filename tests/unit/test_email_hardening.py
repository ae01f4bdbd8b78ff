"""E-mail hardening: no header from alert text (CVE-2024-6923), one Message-ID per delivery, reply
classification edge cases, and a TLS context built only when TLS is used."""

from __future__ import annotations

import base64
import smtplib
import ssl
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alert_worker.channels import email as email_channel
from alert_worker.channels.email import (
    EmailChannel,
    classify_smtp_error,
    header_safe_subject,
    message_id_local_part,
    preload,
    serialize,
)
from alert_worker.errors import InvalidInputError, PermanentDeliveryError, TransientDeliveryError
from alert_worker.models import ChannelType, Message
from alert_worker.settings import SmtpSettings
from tests.support.smtp import SmtpSink

TO = "oncall.person@example.com"


def _message(delivery_id: str = "mail-1", subject: str = "Disk full", attempt: int = 0) -> Message:
    return Message(
        delivery_id=delivery_id, channel=ChannelType.EMAIL, recipient=TO, subject=subject, body="db-1", attempt=attempt
    )


def _channel(
    port: int = 25, security: str = "none", tls_context_factory: Callable[[], ssl.SSLContext] | None = None
) -> EmailChannel:
    settings = SmtpSettings("127.0.0.1", port, "", "", "alerts@example.org", security)
    if tls_context_factory is None:
        return EmailChannel(settings=settings, timeout_seconds=5)
    return EmailChannel(settings=settings, timeout_seconds=5, tls_context_factory=tls_context_factory)


def _b64_word(text: str) -> str:
    return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="


INJECTION = "hi\r\nBcc: victim@example.net\r\nReply-To: thief@evil.example\r\n\r\ninjected body"
ENCODED_SUBJECTS = [
    "=?utf-8?q?hi=0D=0ABcc:_victim@example.net=0D=0AReply-To:_thief@evil.example=0D=0A=0D=0Ainjected_body?=",
    _b64_word(INJECTION),
    _b64_word(_b64_word(INJECTION)),
    "Disk full " + "=?utf-8?q?=0A?=Bcc: victim@example.net",
]
ENCODED_IDS = ["q-encoded-crlf", "b-encoded-crlf", "nested-b-in-b", "lf-word-mid-subject"]


@pytest.mark.parametrize("subject", ENCODED_SUBJECTS, ids=ENCODED_IDS)
def test_encoded_words_that_decode_to_cr_lf_inject_no_header_or_body(smtp_sink: SmtpSink, subject: str) -> None:
    """CVE-2024-6923: the bytes on the wire have no Bcc:/Reply-To: header and no body before ours."""
    channel = _channel(smtp_sink.port)
    channel.send(channel.prepare(_message(subject=subject)))
    [accepted] = smtp_sink.accepted
    head, body = accepted.content.split(b"\r\n\r\n", 1)
    names = {line.split(b":", 1)[0].lower() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")}
    assert b"bcc" not in names and b"reply-to" not in names
    assert accepted.rcpt_tos == [TO]
    assert not body.startswith(b"injected") and b"injected body" not in body
    assert accepted.message["Bcc"] is None and accepted.message["Reply-To"] is None


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Disk full", "Disk full"),
        ("=?utf-8?q?caf=C3=A9?= down", "café down"),
        ("50% =? odd", "50% =? odd"),
        ("  two   spaces ", "two spaces"),
    ],
    ids=["plain", "encoded-word-decoded", "lone-marker-kept", "whitespace-collapsed"],
)
def test_a_header_safe_subject_reads_as_the_recipient_would_see_it(subject: str, expected: str) -> None:
    """Decoding is what a mail reader would show anyway; ordinary subjects pass unchanged."""
    assert header_safe_subject(subject) == expected


def test_encoded_words_nested_too_deeply_are_invalid_input() -> None:
    """Each round of decoding must shrink the text; an attacker's tower of encodings is refused."""
    subject = "x"
    for _ in range(12):
        subject = _b64_word(subject)
    with pytest.raises(InvalidInputError, match="encoded-words"):
        header_safe_subject(subject)


def test_the_message_id_is_the_same_on_every_attempt(smtp_sink: SmtpSink) -> None:
    """A resend carries the first attempt's Message-ID, so a mailbox can fold it."""
    channel = _channel(smtp_sink.port)
    first = channel.send(_message(attempt=0)).message_id
    second = channel.send(_message(attempt=3)).message_id
    assert first == second
    assert [m.message["Message-ID"] for m in smtp_sink.accepted] == [first, second]


@pytest.mark.parametrize(
    "ids",
    [("disk:db-1", "disk/db-1", "disk db-1"), ("a" * 120 + "-1", "a" * 120 + "-2"), ("x" * 255, "x" * 254 + "y")],
    ids=["punctuation-variants", "shared-120-char-prefix", "differ-in-the-last-char"],
)
def test_different_delivery_ids_never_share_a_message_id(ids: tuple[str, ...]) -> None:
    """The local part hashes the whole id: no two ids collide after sanitizing or truncation."""
    built = {str(_channel().build(_message(delivery_id=i))["Message-ID"]) for i in ids}
    assert len(built) == len(ids)
    assert all(len(message_id_local_part(i)) <= 80 for i in ids), "bounded, whatever the id's length"


AUTH_AND_ODD_REPLIES = [
    (smtplib.SMTPAuthenticationError(454, b"4.7.0 Temporary authentication failure"), TransientDeliveryError),
    (smtplib.SMTPAuthenticationError(421, b"4.7.0 Try again later"), TransientDeliveryError),
    (smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials"), PermanentDeliveryError),
    (smtplib.SMTPResponseException(-1, b"garbled reply"), TransientDeliveryError),
    (smtplib.SMTPDataError(-1, b"\xff\xfe"), TransientDeliveryError),
]
AUTH_IDS = ["auth-454-temporary", "auth-421-temporary", "auth-535-permanent", "unparseable-reply", "unparseable-data"]


@pytest.mark.parametrize(("exc", "error"), AUTH_AND_ODD_REPLIES, ids=AUTH_IDS)
def test_temporary_auth_failures_and_unparseable_replies_are_transient(exc: Exception, error: type[Exception]) -> None:
    """A 4xx AUTH reply or a reply smtplib could not parse (code -1) may succeed later."""
    assert type(classify_smtp_error(exc)) is error


def test_a_server_quoting_the_subject_does_not_put_it_in_the_reason(smtp_sink: SmtpSink) -> None:
    """The alert's words are scrubbed while the error is built (the error is never edited afterwards)."""
    smtp_sink.data_replies.append("554 5.7.1 rejected: PayrollSecretProject detected")
    with pytest.raises(PermanentDeliveryError) as caught:
        _channel(smtp_sink.port).send(_message(subject="PayrollSecretProject down"))
    assert "PayrollSecretProject" not in caught.value.reason
    assert caught.value.args == (caught.value.reason,)


class CountingFactory:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> ssl.SSLContext:
        self.calls += 1
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def test_with_smtp_security_none_no_tls_context_is_built(smtp_sink: SmtpSink) -> None:
    """A plain SMTP delivery never pays the ~20 ms CA-bundle load."""
    factory = CountingFactory()
    _channel(smtp_sink.port, tls_context_factory=factory).send(_message())
    assert factory.calls == 0 and len(smtp_sink.accepted) == 1


def test_preload_builds_the_tls_context_only_when_tls_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A preloading parent calls ``preload`` before forking: the context then exists once per process."""
    factory = CountingFactory()
    monkeypatch.setattr(email_channel, "default_tls_context", factory)
    preload(SmtpSettings("h", 25, "", "", "a@example.org", "none"))
    assert factory.calls == 0
    preload(SmtpSettings("h", 587, "", "", "a@example.org", "starttls"))
    assert factory.calls == 1


_PIECES = st.sampled_from(
    [
        "=?utf-8?q?",
        "=?utf-8?b?",
        "?=",
        "=0D",
        "=0A",
        "DQo=",
        "Cg==",
        "Bcc:",
        "\r",
        "\n",
        " ",
        "x",
        "é",
        "_",
        "=?",
        "?q?",
        "=3F=",
    ]
)


@settings(max_examples=300, deadline=None)
@given(subject=st.lists(_PIECES, max_size=40).map("".join))
def test_no_subject_ever_adds_a_header_or_a_bare_line_break(subject: str) -> None:
    """Any mix of encoded-word fragments: the serialized header block is exactly ours, or the subject is refused."""
    channel = _channel()
    try:
        mail = channel.build(channel.prepare(_message(subject=subject)))
        data = serialize(mail, international=False)
    except (InvalidInputError, PermanentDeliveryError):
        return
    head = data.split(b"\r\n\r\n", 1)[0]
    names = sorted(line.split(b":", 1)[0].lower() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t"))
    assert names == sorted(
        [
            b"from",
            b"to",
            b"subject",
            b"date",
            b"message-id",
            b"content-type",
            b"content-transfer-encoding",
            b"mime-version",
        ]
    )
    assert b"\r" not in head.replace(b"\r\n", b"") and b"\n" not in head.replace(b"\r\n", b"")
