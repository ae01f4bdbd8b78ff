"""E-mail over SMTP (``smtplib``): STARTTLS, implicit TLS or plain; one connection per delivery, or per
thread with ``keep_open`` (the thread-pooled worker's kept channels).

A kept connection is reused only when it is provably usable before anything of the next message is sent:
it was idle less than ``KEEP_IDLE_SECONDS`` (servers drop idle sessions, RFC 5321 suggests 5 min; a NAT
may drop them silently, and a NOOP on such a socket would block for the whole send timeout) and it
answers ``NOOP`` with 250 (an idle-timeout ``421`` already waiting in the socket, or a closed socket,
fails it). Otherwise it is closed and a new one opened, so a stale connection costs a reconnect, never a
second send. After any error the connection is dropped, never reused. If the server closes between the
NOOP and ``MAIL FROM``, the send fails before the body is written: transient, retried, not a duplicate.

Errors are classified once, in ``alert_worker.channels.smtp_errors`` (re-exported here).

A message has exactly one recipient and the body is refused above ``MAX_BODY_BYTES``. No header can come
from alert text: the subject is collapsed to one line, its RFC 2047 encoded-words are decoded here (to a
fixed point) so the ``email`` policy has nothing left to decode into CR/LF (CVE-2024-6923, unpatched before
Python 3.11.10 / 3.12.5), and the serialized bytes are checked for exactly the headers we set before DATA.

The TLS context is built only when TLS is used, once per process (``preload`` builds it before a fork).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from email.errors import HeaderParseError
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import formatdate
from io import BytesIO
from typing import Any

from alert_worker.channels.base import Channel
from alert_worker.channels.smtp_errors import (
    classify_smtp_error,
    classify_smtp_reply,
    connect_misconfiguration,
    has_no_reply,
    session_misconfiguration,
)
from alert_worker.digest import (
    CARRIED_HEADER,
    carried_ids_header,
    email_carried_fit,
    email_digest_body,
    email_digest_subject,
)
from alert_worker.errors import (
    ChannelMisconfiguredError,
    ChannelNotConfiguredError,
    InvalidInputError,
    OutcomeUnknownError,
    PermanentDeliveryError,
)
from alert_worker.models import ChannelType, Message, SendReceipt
from alert_worker.settings import SmtpSettings
from alert_worker.validation import (
    MAX_BODY_BYTES,
    MAX_SUBJECT_CHARS,
    check_body_size,
    clean_body,
    clean_subject,
    one_line,
    truncate,
)

_MESSAGE_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MESSAGE_ID_READABLE_CHARS = 40
_MAX_DECODE_ROUNDS = 8
MAX_EMAIL_ADDRESS_CHARS = 254
MAX_EMAIL_BODY_CHARS = 1_000_000
# Every header ``build`` sets, lower-cased; the serialized message must carry exactly these.
_HEADERS = ("from", "to", "subject", "date", "message-id", "content-type", "content-transfer-encoding", "mime-version")
TLS_SECURITIES = ("ssl", "starttls")
_BARE_CR_OR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")
KEEP_IDLE_SECONDS = 30.0  # a kept SMTP connection idle longer than this is closed, not probed


@functools.lru_cache(maxsize=8)
def default_tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Built once per process: loading the CA bundle costs ~20 ms, too much to pay per job.

    ``ca_file`` (``SMTP_CA_FILE``) is added to the default trust store, never instead of it.
    """
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def preload(settings: SmtpSettings) -> None:
    """Build what is per process before a preloading parent forks: the TLS context, only if TLS is used."""
    if settings.security in TLS_SECURITIES:
        _tls_context_for(settings)


def _tls_context_for(settings: SmtpSettings) -> ssl.SSLContext:
    return default_tls_context(settings.ca_file) if settings.ca_file else default_tls_context()


def header_safe_subject(subject: str) -> str:
    """The subject as the ``email`` policy will emit it: one line, encoded-words already decoded.

    The policy decodes RFC 2047 encoded-words in a header value and, before Python 3.11.10 / 3.12.5,
    writes their CR/LF raw (CVE-2024-6923). Decoding here with the policy's own parser, until the text
    decodes to itself, leaves nothing for it to decode; nesting deeper than a few rounds is refused.
    """
    text = one_line(subject)
    for _ in range(_MAX_DECODE_ROUNDS):
        decoded = one_line(str(default_policy.header_factory("Subject", text)))
        if decoded == text:
            return text
        text = decoded
    raise InvalidInputError("invalid_input: subject nests RFC 2047 encoded-words too deeply")


def message_id_local_part(delivery_id: str) -> str:
    """Unique per delivery id, the same on every attempt: a readable prefix and a hash of the whole id."""
    digest = hashlib.sha256(delivery_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    readable = _MESSAGE_ID_UNSAFE.sub("_", delivery_id[:_MESSAGE_ID_READABLE_CHARS])
    return f"{readable}.{digest}"


def serialize(mail: EmailMessage, *, international: bool, carried: bool = False) -> bytes:
    """The bytes sent after DATA, refused unless their header block holds exactly the headers we set."""
    buffer = BytesIO()
    policy = default_policy.clone(utf8=True) if international else default_policy
    BytesGenerator(buffer, policy=policy).flatten(mail, linesep="\r\n")
    data = buffer.getvalue()
    head = data.split(b"\r\n\r\n", 1)[0]
    if _BARE_CR_OR_LF.search(head):
        raise PermanentDeliveryError("invalid_input: the message would carry a bare CR or LF in its header")
    names = sorted(
        line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
        for line in head.split(b"\r\n")
        if line and line[:1] not in (b" ", b"\t")
    )
    expected = sorted((*_HEADERS, CARRIED_HEADER.lower()) if carried else _HEADERS)
    if names != expected:
        raise PermanentDeliveryError("invalid_input: the message would carry a header the alert did not set")
    return data


def parse_address(recipient: str) -> Address:
    """Exactly one bare address (``user@domain``), checked by the standard library.

    An internationalized domain comes back in its ASCII form (``xn--…``, the ``idna`` codec), which every
    server accepts; a non-ASCII local part is kept (it needs SMTPUTF8, checked when sending).
    """
    if not recipient or len(recipient) > MAX_EMAIL_ADDRESS_CHARS:
        raise InvalidInputError("invalid_recipient: expected one e-mail address")
    if any(ch in recipient for ch in ",;\r\n"):
        raise InvalidInputError("invalid_recipient: expected exactly one e-mail address")
    local, _, domain = recipient.rpartition("@")
    try:
        ascii_domain = domain if domain.isascii() else domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise InvalidInputError("invalid_recipient: not a valid e-mail domain") from exc
    # The standard library refuses a non-ASCII local part; its syntax is checked with each such character
    # standing in as a letter (RFC 6531 allows UTF-8 wherever an atom allows a letter).
    shape = "".join(ch if ch.isascii() else "a" for ch in local)
    try:
        address = Address(addr_spec=f"{shape}@{ascii_domain}")
    except (HeaderParseError, ValueError, IndexError, TypeError) as exc:  # HeaderParseError is no ValueError
        raise InvalidInputError("invalid_recipient: not a valid e-mail address") from exc
    if not address.username or not address.domain or address.addr_spec != f"{shape}@{ascii_domain}":
        raise InvalidInputError("invalid_recipient: not a valid e-mail address")
    if any(not ch.isascii() and (not ch.isprintable() or ch.isspace()) for ch in local):
        raise InvalidInputError("invalid_recipient: not a valid e-mail address")
    return address if local.isascii() else Address(username=local, domain=ascii_domain)


class _BodyTracking(smtplib.SMTP):
    """Remembers whether the message body went out after DATA's 354: from then on the outcome may be unknown."""

    body_written = False
    _in_data = False

    def data(self, msg: Any) -> tuple[int, bytes]:
        self._in_data = True
        try:
            return super().data(msg)
        finally:
            self._in_data = False

    def send(self, s: Any) -> None:
        super().send(s)
        if self._in_data and isinstance(s, bytes):  # the body; commands are sent as str
            self.body_written = True


class _TrackedSMTP(_BodyTracking):
    pass


class _TrackedSMTPSSL(_BodyTracking, smtplib.SMTP_SSL):
    pass


class EmailChannel(Channel):
    name = ChannelType.EMAIL
    max_text_chars = MAX_EMAIL_BODY_CHARS

    def __init__(
        self,
        *,
        settings: SmtpSettings,
        timeout_seconds: float,
        tls_context: ssl.SSLContext | None = None,
        tls_context_factory: Callable[[], ssl.SSLContext] | None = None,
        keep_open: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._keep_open = keep_open
        self._clock = clock
        self._kept: _BodyTracking | None = None
        self._kept_since = 0.0
        self._timeout = timeout_seconds
        self._tls_context = tls_context
        # asked only when TLS is used; by default the process's context with SMTP_CA_FILE added
        self._tls_context_factory = tls_context_factory or (lambda: _tls_context_for(settings))
        self._from: Address | None = None
        # An invalid from-address is reported per delivery as channel_not_configured: a constructor
        # runs inside the job and must not crash it.
        with contextlib.suppress(InvalidInputError):
            self._from = parse_address(settings.from_address)

    def prepare(self, message: Message) -> Message:
        """One valid address, a one-line subject, a body within ``MAX_BODY_BYTES``."""
        if self._from is None:
            raise ChannelNotConfiguredError("email (ALERTS_FROM_EMAIL is not one valid address)")
        parse_address(message.recipient)
        body = clean_body(message.body)  # refuses > MAX_BODY_BYTES, control characters, surrogates
        return replace(message, subject=clean_subject(message.subject), body=body)

    def carried_fit(self, message: Message, carried: Sequence[Message]) -> int:
        """As many as fit, each in full, in one body of at most ``MAX_BODY_BYTES`` (§8: the rest stay held)."""
        return email_carried_fit(message, carried, MAX_BODY_BYTES)

    def build(self, message: Message) -> EmailMessage:
        """The RFC 5322 message, with one Message-ID per delivery so a mailbox can fold a resend."""
        sender = self._from
        if sender is None:
            raise ChannelNotConfiguredError("email (ALERTS_FROM_EMAIL is not one valid address)")
        mail = EmailMessage()
        mail["From"] = sender
        mail["To"] = parse_address(message.recipient)
        subject = email_digest_subject(message) if message.carried else message.subject
        mail["Subject"] = header_safe_subject(truncate(subject, MAX_SUBJECT_CHARS))  # never trust it with CR/LF
        mail["Date"] = formatdate(localtime=False, usegmt=True)
        mail["Message-ID"] = f"<{message_id_local_part(message.delivery_id)}@{sender.domain}>"
        if message.carried:  # one message, one Message-ID (the carrier's); the carried ids in a header of ours
            mail[CARRIED_HEADER] = carried_ids_header(message)
            mail.set_content(email_digest_body(message))  # never cut: ``carried_fit`` carried only what fits
        else:
            mail.set_content(truncate(check_body_size(message.body), self.max_text_chars) or " ")
        return mail

    def _connect(self) -> _BodyTracking:
        """Connect, greet, STARTTLS and log in as configured; a refusal of the settings themselves raises
        ``ChannelMisconfiguredError`` (the channel is paused, docs/contract.md §7.7)."""
        s = self._settings
        context: ssl.SSLContext | None = None
        if s.security in TLS_SECURITIES:
            context = self._tls_context or self._tls_context_factory()
        smtp: _BodyTracking
        try:
            if s.security == "ssl":
                smtp = _TrackedSMTPSSL(s.host, s.port, timeout=self._timeout, context=context)
            else:
                smtp = _TrackedSMTP(s.host, s.port, timeout=self._timeout)
        except (smtplib.SMTPException, OSError) as exc:
            refused = connect_misconfiguration(exc, s.security, self._speaks_tls)
            if refused is None:
                raise
            raise refused from exc
        try:
            if s.security == "starttls":
                smtp.starttls(context=context)
            if s.login:
                smtp.login(s.user, s.password)
        except (smtplib.SMTPException, OSError) as exc:
            smtp.close()  # a refused STARTTLS or login must not leak the socket
            refused = session_misconfiguration(exc)
            if refused is None:
                raise
            raise refused from exc
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _speaks_tls(self) -> bool:
        """Whether the server opens with a TLS handshake (SMTPS), asked on a new connection.

        Used only after a plain connection got no greeting within the send timeout: an SMTPS port waits
        for our ClientHello as we wait for its 220. Certificates are not checked: only the protocol is asked.
        """
        probe = ssl.create_default_context()
        probe.check_hostname = False
        probe.verify_mode = ssl.CERT_NONE
        try:
            with (
                socket.create_connection((self._settings.host, self._settings.port), timeout=self._timeout) as raw,
                probe.wrap_socket(raw, server_hostname=self._settings.host),
            ):
                return True
        except (OSError, ValueError):
            return False

    def check_login(self) -> None:
        """``alert-worker check``: connect, STARTTLS/SSL as configured, AUTH, QUIT; no mail.

        Raises ``ChannelMisconfiguredError`` when the settings are refused, another ``DeliveryError`` when
        the server cannot be reached or answers otherwise.
        """
        try:
            smtp = self._connect()
            try:
                smtp.ehlo_or_helo_if_needed()
            finally:
                _quit(smtp)
        except ChannelMisconfiguredError:
            raise
        except (smtplib.SMTPException, OSError) as exc:
            raise classify_smtp_error(exc) from exc

    def destination(self, message: Message) -> str:
        """The SMTP server: a 421 or 4.7.x throttles the whole relay, not one mailbox."""
        return f"{self._settings.host}:{self._settings.port}"

    def _reusable(self) -> _BodyTracking | None:
        """The kept connection if it was idle briefly and answers NOOP with 250; else closed and ``None``."""
        smtp, self._kept = self._kept, None
        if smtp is None:
            return None
        if self._clock() - self._kept_since <= KEEP_IDLE_SECONDS:
            try:
                if smtp.noop()[0] == 250:
                    return smtp
            except (smtplib.SMTPException, OSError):
                pass
        _quit(smtp)
        return None

    def send(self, message: Message) -> SendReceipt:
        mail = self.build(message)
        sender, recipient = str(mail["From"].addresses[0].addr_spec), str(mail["To"].addresses[0].addr_spec)
        international = not (sender + recipient).isascii()  # a non-ASCII local part; domains are ASCII here
        options = ("SMTPUTF8", "BODY=8BITMIME") if international else ()
        smtp: _BodyTracking | None = None
        try:
            data = serialize(mail, international=international, carried=bool(message.carried))
            smtp = self._reusable() or self._connect()
            smtp.body_written = False
            keep = False
            try:
                smtp.ehlo_or_helo_if_needed()
                if international and not smtp.has_extn("smtputf8"):
                    raise PermanentDeliveryError(
                        "smtp_smtputf8_unsupported: the address has a non-ASCII local part and the SMTP server "
                        "does not offer SMTPUTF8",
                        definite=True,
                    )
                smtp.sendmail(sender, [recipient], data, mail_options=options)
                keep = self._keep_open
            finally:
                if keep:
                    self._kept, self._kept_since = smtp, self._clock()
                else:
                    _quit(smtp)
        except (smtplib.SMTPException, OSError, UnicodeError) as exc:
            refused = None if getattr(smtp, "body_written", False) else session_misconfiguration(exc)
            if refused is not None:  # e.g. 530 authentication required, said to MAIL FROM
                raise refused from exc
            if getattr(smtp, "body_written", False) and has_no_reply(exc):
                raise OutcomeUnknownError(f"smtp no reply after end of DATA: {type(exc).__name__}") from exc
            error = classify_smtp_error(exc, echoes=(message.subject, message.body), sender=sender)
            error.definite = not getattr(smtp, "body_written", False)  # before the body: nothing reached it
            raise error from exc
        return SendReceipt(message_id=str(mail["Message-ID"]))

    def close(self) -> None:
        """QUIT the kept connection, if any."""
        smtp, self._kept = self._kept, None
        if smtp is not None:
            _quit(smtp)


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


__all__ = ["EmailChannel", "classify_smtp_error", "classify_smtp_reply", "parse_address", "preload"]
