"""SMTP replies and exceptions -> our errors, once (``classify_smtp_error``).

Answers that refuse the channel's own settings (``session_misconfiguration``, ``connect_misconfiguration``:
wrong credentials, AUTH required, a TLS mode the server does not speak, an untrusted certificate) are
``ChannelMisconfiguredError``: the channel is paused, its deliveries deferred (docs/contract.md §7.7).

Authentication failures with a 5xx code, refused sender or recipient with a 5xx code and every other 5xx
are permanent (only a ``recipient_gone`` reply to RCPT TO suppresses the recipient); 4xx replies (``454
4.7.0`` temporary AUTH failure included), replies smtplib could not parse (code -1), timeouts, refused
connections and disconnects are transient. An RFC 3463 enhanced status
code (``5.1.1``, ``4.2.2``) decides over the basic code, and is found even when the reply is wrapped in
another exception. Reasons quote the codes and the server's text with addresses, URLs, numbers and the
alert's own words stripped, and are complete when the error is built (never edited afterwards).
"""

from __future__ import annotations

import re
import smtplib
import ssl
from collections.abc import Callable

from alert_worker.errors import (
    ChannelMisconfiguredError,
    DeliveryError,
    PermanentDeliveryError,
    RecipientRejectedError,
    SlowDownError,
    TransientDeliveryError,
)
from alert_worker.redaction import sanitize_text, scrub_echoes

# RFC 3463: class.subject.detail, class 2/4/5, subject and detail up to three digits; not part of an IP.
_ENHANCED_CODE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_BASIC_CODE = re.compile(r"(?<![\d.])([245])\d\d(?![\d.])")
# The only RFC 3463 codes that say the recipient can never receive, as (subject, detail) of a 5.x.x code:
# 5.1.1 no such mailbox, 5.1.2 no such domain, 5.1.10 the domain accepts no mail (null MX), 5.2.1 mailbox
# disabled. Never 5.1.0 (other address status: Postfix's "Sender address rejected"), 5.1.7/5.1.8 (the
# sender's address) or 5.7.x (policy). docs/contract.md §7.2.
RECIPIENT_GONE_CODES = frozenset({(1, 1), (1, 2), (1, 10), (2, 1)})
RCPT_REFUSED = "smtp recipient refused"  # the ``what`` of a reply to RCPT TO, the only command that may suppress
_NAMES_SENDER = re.compile(r"\bsender\b", re.IGNORECASE)


def recipient_gone(enhanced: re.Match[str] | None, what: str, text: str, sender: str = "") -> bool:
    """A reply to RCPT TO with 5.1.1, 5.1.2, 5.1.10 or 5.2.1 whose text does not name the sender.

    Relays report the sender's own problems at RCPT too (Postfix delays MAIL FROM restrictions to it):
    a text with the word "sender", or the from-address itself, is about us, not about the recipient.
    """
    if what != RCPT_REFUSED or enhanced is None or enhanced.group(1) != "5":
        return False
    if (int(enhanced.group(2)), int(enhanced.group(3))) not in RECIPIENT_GONE_CODES:
        return False
    return not (_NAMES_SENDER.search(text) or (sender and sender.lower() in text.lower()))


def _feedback_kind(
    code: int | None, enhanced: re.Match[str] | None, what: str, text: str, sender: str
) -> type[TransientDeliveryError] | type[PermanentDeliveryError] | None:
    """421 or 4.7.x: slow down (cooldown). The recipient gone (``recipient_gone``): suppress. Else ``None``."""
    if code == 421 or (enhanced and enhanced.group(1) == "4" and enhanced.group(2) == "7"):
        return SlowDownError
    if recipient_gone(enhanced, what, text, sender):
        return RecipientRejectedError
    return None


def classify_smtp_reply(
    code: int | None, text: str, *, what: str, echoes: tuple[str, ...] = (), sender: str = ""
) -> TransientDeliveryError | PermanentDeliveryError:
    """Map an SMTP reply to our error; the enhanced status code wins over the basic one.

    A code outside 200-599 (smtplib's -1 for a reply it could not parse) says nothing: transient.
    ``echoes`` (the alert's subject and body) are scrubbed from the server's text, which may quote them.
    ``sender`` (the from-address) marks a reply that names it as about the sender, never suppressing.
    """
    enhanced = _ENHANCED_CODE.search(text)
    detail = scrub_echoes(sanitize_text(_ENHANCED_CODE.sub("", text, count=1), limit=160), *echoes)
    valid = code is not None and 200 <= code <= 599
    label = f"{what} {code}" if valid else (f"{what} unparseable reply" if code else what)
    if enhanced:
        label += f" {enhanced.group(0)}"
        klass = enhanced.group(1)
    else:
        klass = str(code)[0] if valid else "4"
    reason = f"{label}: {detail}" if detail else label
    special = _feedback_kind(code if valid else None, enhanced, what, text, sender)
    if special is not None:
        return special(reason)
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
        return RCPT_REFUSED, code, _reply_text(raw)
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


def classify_smtp_error(exc: BaseException, *, echoes: tuple[str, ...] = (), sender: str = "") -> DeliveryError:
    """Any exception from an SMTP exchange -> our error. The reply wins over the exception's type.

    An authentication failure is permanent (wrong credentials) unless the server said 4xx, e.g.
    ``454 4.7.0 Temporary authentication failure`` or ``421``: then it is transient.
    """
    for link in _chain(exc):
        if isinstance(link, smtplib.SMTPAuthenticationError):
            if 400 <= link.smtp_code <= 499:
                return TransientDeliveryError(f"smtp_auth_unavailable {link.smtp_code}: temporary, retrying")
            return PermanentDeliveryError(f"smtp_auth_failed {link.smtp_code}: check SMTP_USER/SMTP_PASSWORD")
        reply = _smtp_reply(link)
        if reply is not None:
            what, code, text = reply
            return classify_smtp_reply(code, text, what=what, echoes=echoes, sender=sender)
    for link in _chain(exc):
        quoted = _quoted_reply(link)
        if quoted is not None:
            return classify_smtp_reply(quoted[0], quoted[1], what="smtp", echoes=echoes)
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


def has_no_reply(exc: BaseException) -> bool:
    """A timeout or a disconnect, not an SMTP reply: the server may or may not have queued the message."""
    return _smtp_reply(exc) is None and isinstance(exc, smtplib.SMTPServerDisconnected | TimeoutError | OSError)


# OpenSSL's words for "the peer did not answer with TLS" (a plain-text greeting read as a TLS record).
_NOT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"}
)
_UNTRUSTED = "smtp_tls_verify_failed: the server certificate is not trusted (see SMTP_CA_FILE)"


def session_misconfiguration(exc: BaseException) -> ChannelMisconfiguredError | None:
    """An SMTP answer, before the message body, that refuses the channel's settings; else ``None``.

    535/534/530 and any other 5xx to AUTH (``smtp_auth_failed``), 530 to MAIL FROM (authentication or
    STARTTLS required), no STARTTLS or no AUTH offered while the settings ask for it, an untrusted
    certificate. A 4xx to AUTH (``454 4.7.0`` temporary failure) is no refusal of the settings.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ChannelMisconfiguredError(_UNTRUSTED)
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        if 500 <= exc.smtp_code <= 599:
            return ChannelMisconfiguredError(f"smtp_auth_failed {exc.smtp_code}: check SMTP_USER and SMTP_PASSWORD")
        return None
    if isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code == 530:
        if "starttls" in _reply_text(exc.smtp_error).lower():
            return ChannelMisconfiguredError("smtp_tls_required 530: the server wants STARTTLS (SMTP_SECURITY)")
        return ChannelMisconfiguredError("smtp_auth_required 530: the server wants SMTP_USER and SMTP_PASSWORD")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        text = str(exc).lower()
        if "starttls" in text:
            return ChannelMisconfiguredError("smtp_starttls_unsupported: the server offers no STARTTLS (SMTP_SECURITY)")
        if "auth" in text:
            return ChannelMisconfiguredError("smtp_auth_unsupported: the server offers no AUTH (SMTP_USER)")
        return None
    if type(exc) is smtplib.SMTPException and "authentication method" in str(exc).lower():
        return ChannelMisconfiguredError("smtp_auth_unsupported: no AUTH mechanism in common with the server")
    return None


def connect_misconfiguration(
    exc: BaseException, security: str, speaks_tls: Callable[[], bool]
) -> ChannelMisconfiguredError | None:
    """A connection whose TLS mode does not match the server's, or whose certificate is untrusted.

    ``SMTP_SECURITY=ssl`` against a plain server: OpenSSL reads the ``220`` greeting as a TLS record
    (``WRONG_VERSION_NUMBER``). ``none``/``starttls`` against SMTPS: no greeting comes (the server waits for
    our handshake) and smtplib reports a disconnect after the timeout; ``speaks_tls`` then asks the port.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ChannelMisconfiguredError(_UNTRUSTED)
    if security == "ssl" and isinstance(exc, ssl.SSLError) and getattr(exc, "reason", None) in _NOT_TLS_REASONS:
        return ChannelMisconfiguredError(
            "smtp_tls_mismatch: SMTP_SECURITY=ssl but the server answers in plain text (use starttls or none)"
        )
    timed_out = any(isinstance(link, TimeoutError) for link in _chain(exc)[1:])
    if security != "ssl" and isinstance(exc, smtplib.SMTPServerDisconnected) and timed_out and speaks_tls():
        return ChannelMisconfiguredError(
            f"smtp_tls_mismatch: SMTP_SECURITY={security} but the server speaks TLS at connect (use ssl)"
        )
    return None
