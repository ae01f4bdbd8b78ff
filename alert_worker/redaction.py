"""Pure helpers that keep recipients and secrets out of logs, errors and operator columns.

Every function here is total: it accepts any string (lone surrogates, NUL, malformed URLs) and returns
text that can be stored in Postgres and logged, because it runs before the input has been validated.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from urllib.parse import urlsplit

from alert_worker.models import ChannelType
from alert_worker.validation import UNSTORABLE

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_HOST_PATH = re.compile(r"\b(?:[a-zA-Z0-9-]+\.)+[a-zA-Z]{2,}(?::\d+)?/[^\s'\"<>]*")  # hooks.slack.com/services/...
_EMAIL = re.compile(r"[^\s'\"<>()\[\],;:]+@[^\s'\"<>()\[\],;:]+")
_EMAIL_IN_BRACKETS = re.compile(r"<" + _EMAIL.pattern + r">")  # "<ops@example.com>" -> "<email>", not "<<email>>"
_PHONE = re.compile(r"\+?\d[\d ()./-]{6,}\d")
_TOKEN = re.compile(r"\b[A-Za-z0-9_-]{24,}\b")  # auth tokens, account SIDs, webhook secrets
_UNSTORABLE = re.compile(r"[\x01-\x1f\x7f]|" + UNSTORABLE.pattern)  # what validation refuses, and controls
_MAX_ERROR_CHARS = 300
_MAX_MASKED_CHARS = 120


def recipient_hash(secret: str, channel: str, recipient: str) -> str:
    """HMAC-SHA256(secret, "{channel}:{recipient}"), hex, first 16 characters (docs/contract.md §2)."""
    if not secret:
        raise ValueError("recipient hash secret is empty: refusing an unkeyed hash")
    digest = hmac.new(secret.encode(), f"{channel}:{recipient}".encode("utf-8", "surrogatepass"), hashlib.sha256)
    return digest.hexdigest()[:16]


def _storable(text: str) -> str:
    """Control characters and lone surrogates replaced, length bounded: safe for a text column."""
    text = _UNSTORABLE.sub("?", text)
    return text if len(text) <= _MAX_MASKED_CHARS else text[: _MAX_MASKED_CHARS - 1] + "…"


def mask_recipient(channel: ChannelType | str, recipient: str) -> str:
    """The operator-facing form: ``o***@example.com``, ``***4567``, ``hooks.slack.com/***``."""
    channel = ChannelType(channel)
    if channel is ChannelType.EMAIL:
        local, sep, domain = recipient.rpartition("@")
        if not sep or not local:
            return "***"
        return _storable(f"{local[0]}***@{domain}")
    if channel is ChannelType.SMS:
        digits = re.sub(r"[^0-9]", "", recipient)
        return f"***{digits[-4:]}" if len(digits) >= 4 else "***"
    if recipient.strip() in ("", "default"):
        return "default"
    try:
        host = urlsplit(recipient.strip()).hostname if "://" in recipient else None
    except ValueError:  # "https://[::1" and other malformed URLs
        host = None
    return _storable(f"{host}/***") if host else "***"


def mask_tail(value: str) -> str:
    """``***`` plus the last four characters: enough to tell two recipients apart."""
    return _storable(f"***{value[-4:]}") if len(value) > 4 else "***"


def _number_if_phone(match: re.Match[str]) -> str:
    """Seven digits or more is a phone number; ``451 4.3.0`` (a reply and its enhanced code) is not."""
    return "<number>" if sum(ch.isdigit() for ch in match.group(0)) >= 7 else match.group(0)


def sanitize_text(text: str, *, limit: int = _MAX_ERROR_CHARS) -> str:
    """Strip URLs, e-mail addresses, phone numbers and token-like strings from provider text.

    One line, bounded, storable: the result may go to ``error_message``, a log line or a job result.
    """
    text = _URL.sub("<url>", text)
    text = _EMAIL_IN_BRACKETS.sub("<email>", text)
    text = _EMAIL.sub("<email>", text)
    text = _HOST_PATH.sub("<url>", text)
    text = _PHONE.sub(_number_if_phone, text)
    text = _TOKEN.sub("<redacted>", text)
    text = _UNSTORABLE.sub(" ", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_WORD_EDGES = "\"'<>()[]{},;:.!?"


def scrub_echoes(text: str, *sources: str, min_chars: int = 4) -> str:
    """Replace every word of ``text`` that also occurs in ``sources`` (the alert's own subject and body).

    Providers sometimes quote the message back ("rejected: <your subject>"); the reason must not carry it.
    Words shorter than ``min_chars`` are kept so codes and short protocol words survive.
    """
    seen = {w.strip(_WORD_EDGES) for src in sources for w in src.split()}
    seen = {w for w in seen if len(w) >= min_chars}
    if not seen:
        return text
    return " ".join("<redacted>" if w.strip(_WORD_EDGES) in seen else w for w in text.split(" "))


# -- connection URLs and operator-facing errors (settings ``repr``, start-up probes, CLI failures) --------
def url_password(url: str) -> str:
    """The password in a DSN, or ``""`` (also for a malformed URL): what ``safe_error`` must mask."""
    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""


def redact_url(url: str) -> str:
    """Keep scheme, user, host, port and path of a DSN; the password becomes ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "<malformed url>"
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username or ''}:***@{netloc}").geturl()


def url_target(url: str) -> str:
    """``host:port/db`` of a URL for a log line; never credentials (``?`` when there is no host)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "?"
    return f"{host}:{port or ''}{parts.path}" if host else "?"


def safe_error(exc: BaseException, *secrets: str) -> str:
    """``Type: first line`` of an error, bounded, with each known secret (a DSN password) masked."""
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
