"""E-mail over SMTP (``smtplib``): STARTTLS, implicit TLS or plain, one connection per delivery.

Errors are classified once, here (``classify_smtp_error``): authentication failures, refused sender or
recipient with a 5xx code and every other 5xx are permanent; 4xx replies, timeouts, refused connections
and disconnects are transient. An RFC 3463 enhanced status code (``5.1.1``, ``4.2.2``) in the reply
decides over the basic code, and is found even when the SMTP reply is wrapped in another exception
(``raise ... from``, or an exception whose text quotes the reply). Reasons quote the codes and the
server's text with addresses, URLs and numbers stripped.

A message has exactly one recipient, headers never contain CR or LF (the subject is collapsed to one
line again here, whatever the caller did), and the body is refused above ``MAX_BODY_BYTES``.
"""

from __future__ import annotations

import contextlib
import functools
import re
import smtplib
import ssl
from dataclasses import replace
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate

from alert_worker.channels.base import Channel
from alert_worker.errors import (
    ChannelNotConfiguredError,
    DeliveryError,
    InvalidInputError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from alert_worker.models import ChannelType, Message, SendReceipt
from alert_worker.redaction import sanitize_text, scrub_echoes
from alert_worker.settings import SmtpSettings
from alert_worker.validation import check_body_size, clean_body, clean_subject, one_line, truncate

# RFC 3463: class.subject.detail, class 2/4/5, subject and detail up to three digits; not part of an IP.
_ENHANCED_CODE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_BASIC_CODE = re.compile(r"(?<![\d.])([245])\d\d(?![\d.])")
_MESSAGE_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_EMAIL_ADDRESS_CHARS = 254
MAX_EMAIL_BODY_CHARS = 1_000_000


@functools.lru_cache(maxsize=8)
def default_tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Built once per process: loading the CA bundle costs ~20 ms, too much to pay per job."""
    return ssl.create_default_context(cafile=ca_file)


def parse_address(recipient: str) -> Address:
    """Exactly one bare address (``user@domain``), checked by the standard library."""
    if not recipient or len(recipient) > MAX_EMAIL_ADDRESS_CHARS:
        raise InvalidInputError("invalid_recipient: expected one e-mail address")
    if any(ch in recipient for ch in ",;\r\n"):
        raise InvalidInputError("invalid_recipient: expected exactly one e-mail address")
    try:
        address = Address(addr_spec=recipient)
    except (HeaderParseError, ValueError, IndexError, TypeError) as exc:  # HeaderParseError is no ValueError
        raise InvalidInputError("invalid_recipient: not a valid e-mail address") from exc
    if not address.username or not address.domain or address.addr_spec != recipient:
        raise InvalidInputError("invalid_recipient: not a valid e-mail address")
    return address


def classify_smtp_reply(code: int | None, text: str, *, what: str) -> TransientDeliveryError | PermanentDeliveryError:
    """Map an SMTP reply to our error; the enhanced status code wins over the basic one."""
    enhanced = _ENHANCED_CODE.search(text)
    detail = sanitize_text(_ENHANCED_CODE.sub("", text, count=1), limit=160)
    label = f"{what} {code}" if code else what
    if enhanced:
        label += f" {enhanced.group(0)}"
        klass = enhanced.group(1)
    else:
        klass = str(code)[0] if code else "4"
    reason = f"{label}: {detail}" if detail else label
    if klass == "4":
        return TransientDeliveryError(reason)
    return PermanentDeliveryError(reason)


def _reply_text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps (``__cause__`` / ``__context__``), outermost first, no cycles."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen) and len(seen) < 8:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _smtp_reply(exc: BaseException) -> tuple[str, int | None, str] | None:
    """(what, code, text) of the SMTP reply an exception carries, if any."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused) and exc.recipients:
        code, raw = next(iter(exc.recipients.values()))
        return "smtp recipient refused", code, _reply_text(raw)
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return "smtp sender refused", exc.smtp_code, _reply_text(exc.smtp_error)
    if isinstance(exc, smtplib.SMTPResponseException):
        return "smtp", exc.smtp_code, _reply_text(exc.smtp_error)
    return None


def _quoted_reply(exc: BaseException) -> tuple[int | None, str] | None:
    """A reply quoted in an exception's text (``"450 4.2.1 mailbox busy"``), as some wrappers do."""
    text = " ".join(_reply_text(a) for a in exc.args if isinstance(a, str | bytes))
    if not _ENHANCED_CODE.search(text):
        return None
    basic = _BASIC_CODE.search(text)
    return (int(basic.group(0)) if basic else None), text


def classify_smtp_error(exc: BaseException) -> DeliveryError:
    """Any exception from an SMTP exchange -> our error. The reply wins over the exception's type."""
    for link in _chain(exc):
        if isinstance(link, smtplib.SMTPAuthenticationError):
            return PermanentDeliveryError(f"smtp_auth_failed {link.smtp_code}: check SMTP_USER/SMTP_PASSWORD")
        reply = _smtp_reply(link)
        if reply is not None:
            what, code, text = reply
            return classify_smtp_reply(code, text, what=what)
    for link in _chain(exc):
        quoted = _quoted_reply(link)
        if quoted is not None:
            return classify_smtp_reply(quoted[0], quoted[1], what="smtp")
    name = type(exc).__name__
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return PermanentDeliveryError("smtp_not_supported: the server refused STARTTLS, AUTH or SMTPUTF8")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return TransientDeliveryError("smtp_disconnected: the server closed the connection")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentDeliveryError("smtp_tls_verify_failed: the server certificate is not trusted")
    if isinstance(exc, TimeoutError):
        return TransientDeliveryError("smtp_timeout")
    if isinstance(exc, UnicodeEncodeError):
        return PermanentDeliveryError("smtp_encoding_error: address needs SMTPUTF8")
    return TransientDeliveryError(f"smtp_connection_error: {name}")  # refused, reset, TLS error, DNS


class EmailChannel(Channel):
    name = ChannelType.EMAIL
    max_text_chars = MAX_EMAIL_BODY_CHARS

    def __init__(
        self,
        *,
        settings: SmtpSettings,
        timeout_seconds: float,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self._settings = settings
        self._timeout = timeout_seconds
        self._tls_context = tls_context
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

    def build(self, message: Message) -> EmailMessage:
        """The RFC 5322 message, with a deterministic Message-ID so resends can be recognised."""
        sender = self._from
        if sender is None:
            raise ChannelNotConfiguredError("email (ALERTS_FROM_EMAIL is not one valid address)")
        mail = EmailMessage()
        mail["From"] = sender
        mail["To"] = parse_address(message.recipient)
        mail["Subject"] = one_line(message.subject)  # never trust the caller with CR/LF in a header
        mail["Date"] = formatdate(localtime=False, usegmt=True)
        local = _MESSAGE_ID_UNSAFE.sub("_", message.delivery_id)[:120]
        mail["Message-ID"] = f"<{local}.{message.attempt}@{sender.domain}>"
        mail.set_content(truncate(check_body_size(message.body), self.max_text_chars) or " ")
        return mail

    def _connect(self) -> smtplib.SMTP:
        s = self._settings
        # Only TLS needs a context: building the default one loads the CA bundle (~20-50 ms per process).
        context = self._tls_context or (default_tls_context() if s.security in ("ssl", "starttls") else None)
        smtp: smtplib.SMTP
        if s.security == "ssl":
            smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=self._timeout, context=context)
        else:
            smtp = smtplib.SMTP(s.host, s.port, timeout=self._timeout)
        try:
            if s.security == "starttls":
                smtp.starttls(context=context)
            if s.login:
                smtp.login(s.user, s.password)
        except BaseException:
            smtp.close()  # a refused STARTTLS or login must not leak the socket
            raise
        return smtp

    def send(self, message: Message) -> SendReceipt:
        mail = self.build(message)
        try:
            smtp = self._connect()
            try:
                smtp.send_message(mail)
            finally:
                try:
                    smtp.quit()
                except (smtplib.SMTPException, OSError):
                    smtp.close()
        except (smtplib.SMTPException, OSError, UnicodeError) as exc:
            error = classify_smtp_error(exc)
            error.reason = scrub_echoes(error.reason, message.subject, message.body)  # a server may quote them
            error.args = (error.reason,)
            raise error from exc
        return SendReceipt(message_id=str(mail["Message-ID"]))
