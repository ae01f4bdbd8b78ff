"""Pure helpers that keep recipients and secrets out of logs, errors and operator columns."""

from __future__ import annotations

import hashlib
import hmac
import re
from urllib.parse import urlsplit

from alert_worker.models import ChannelType

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_EMAIL = re.compile(r"[^\s'\"<>()\[\],;:]+@[^\s'\"<>()\[\],;:]+")
_PHONE = re.compile(r"\+?\d[\d ()./-]{6,}\d")
_MAX_ERROR_CHARS = 300


def recipient_hash(secret: str, channel: str, recipient: str) -> str:
    """HMAC-SHA256(secret, "{channel}:{recipient}"), hex, first 16 characters (CONTRACT §2)."""
    if not secret:
        raise ValueError("recipient hash secret is empty: refusing an unkeyed hash")
    digest = hmac.new(secret.encode(), f"{channel}:{recipient}".encode("utf-8", "surrogatepass"), hashlib.sha256)
    return digest.hexdigest()[:16]


def mask_recipient(channel: ChannelType | str, recipient: str) -> str:
    """The operator-facing form: ``o***@example.com``, ``***4567``, ``hooks.slack.com/***``."""
    channel = ChannelType(channel)
    if channel is ChannelType.EMAIL:
        local, sep, domain = recipient.rpartition("@")
        if not sep or not local:
            return "***"
        return f"{local[0]}***@{domain}"
    if channel is ChannelType.SMS:
        digits = re.sub(r"\D", "", recipient)
        return f"***{digits[-4:]}" if len(digits) >= 4 else "***"
    host = urlsplit(recipient).hostname if "://" in recipient else None
    return f"{host}/***" if host else "default"


def mask_tail(value: str) -> str:
    """``***`` plus the last four characters: enough to tell two recipients apart."""
    return f"***{value[-4:]}" if len(value) > 4 else "***"


def sanitize_text(text: str, *, limit: int = _MAX_ERROR_CHARS) -> str:
    """Strip URLs, e-mail addresses and phone numbers from provider text; one line, bounded."""
    text = _URL.sub("<url>", text)
    text = _EMAIL.sub("<email>", text)
    text = _PHONE.sub("<number>", text)
    text = " ".join(text.split())
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"
