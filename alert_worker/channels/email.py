"""E-mail over SMTP (``smtplib``): STARTTLS, implicit TLS or plain, one connection per delivery.

Errors are classified once, here: authentication failures, refused sender or recipient with a 5xx code
and every other 5xx are permanent; 4xx replies, timeouts, refused connections and disconnects are
transient. An RFC 3463 enhanced status code (``5.1.1``) in the reply decides over the basic code.
"""

from __future__ import annotations

import functools
import re
import smtplib
import ssl
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate

from alert_worker.channels.base import Channel
from alert_worker.errors import InvalidInputError, PermanentDeliveryError, TransientDeliveryError
from alert_worker.models import ChannelType, Message, SendReceipt
from alert_worker.redaction import sanitize_text
from alert_worker.settings import SmtpSettings
from alert_worker.validation import truncate

_ENHANCED_CODE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
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
    try:
        address = Address(addr_spec=recipient)
    except (ValueError, IndexError, TypeError) as exc:  # HeaderParseError is a ValueError
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
        self._from = parse_address(settings.from_address) if settings.from_address else None

    def prepare(self, message: Message) -> Message:
        parse_address(message.recipient)
        return message

    def build(self, message: Message) -> EmailMessage:
        """The RFC 5322 message, with a deterministic Message-ID so resends can be recognised."""
        sender = self._from
        if sender is None:
            raise PermanentDeliveryError("channel_not_configured: email")
        mail = EmailMessage()
        mail["From"] = sender
        mail["To"] = parse_address(message.recipient)
        mail["Subject"] = message.subject  # already one line: clean_subject collapsed CR/LF
        mail["Date"] = formatdate(localtime=False, usegmt=True)
        local = _MESSAGE_ID_UNSAFE.sub("_", message.delivery_id)[:120]
        mail["Message-ID"] = f"<{local}.{message.attempt}@{sender.domain}>"
        mail.set_content(truncate(message.body, self.max_text_chars) or " ")
        return mail

    def _connect(self) -> smtplib.SMTP:
        s = self._settings
        context = self._tls_context or default_tls_context()
        smtp: smtplib.SMTP
        if s.security == "ssl":
            smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=self._timeout, context=context)
        else:
            smtp = smtplib.SMTP(s.host, s.port, timeout=self._timeout)
            if s.security == "starttls":
                smtp.starttls(context=context)
        if s.login:
            smtp.login(s.user, s.password)
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
        except smtplib.SMTPAuthenticationError as exc:
            raise PermanentDeliveryError(f"smtp_auth_failed {exc.smtp_code}: check SMTP_USER/SMTP_PASSWORD") from exc
        except smtplib.SMTPRecipientsRefused as exc:
            code, raw = next(iter(exc.recipients.values()))
            raise classify_smtp_reply(code, _reply_text(raw), what="smtp recipient refused") from exc
        except smtplib.SMTPSenderRefused as exc:
            raise classify_smtp_reply(exc.smtp_code, _reply_text(exc.smtp_error), what="smtp sender refused") from exc
        except smtplib.SMTPResponseException as exc:  # data errors, connect errors with a reply, ...
            raise classify_smtp_reply(exc.smtp_code, _reply_text(exc.smtp_error), what="smtp") from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise PermanentDeliveryError("smtp_not_supported: the server refused STARTTLS or AUTH") from exc
        except smtplib.SMTPServerDisconnected as exc:
            raise TransientDeliveryError("smtp_disconnected: the server closed the connection") from exc
        except ssl.SSLCertVerificationError as exc:
            raise PermanentDeliveryError("smtp_tls_verify_failed: the server certificate is not trusted") from exc
        except TimeoutError as exc:
            raise TransientDeliveryError("smtp_timeout") from exc
        except (smtplib.SMTPException, OSError) as exc:  # refused connection, TLS error, DNS failure
            raise TransientDeliveryError(f"smtp_connection_error: {type(exc).__name__}") from exc
        except UnicodeEncodeError as exc:
            raise PermanentDeliveryError("smtp_encoding_error: address needs SMTPUTF8") from exc
        return SendReceipt(message_id=str(mail["Message-ID"]))
