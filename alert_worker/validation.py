"""Pure checks on a job's arguments.

Two kinds of bad input are treated differently (docs/contract.md §1): a malformed ``delivery_id``, ``channel`` or
``attempt`` raises ``ValueError`` before any connection is opened (the producer has a bug and must see it);
anything wrong with the recipient, subject or body poisons the delivery with a clear reason instead.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from alert_worker.errors import InvalidInputError
from alert_worker.models import ChannelType

MAX_DELIVERY_ID_CHARS = 255
MAX_ATTEMPT = 2**31 - 1  # the ``attempts`` column is a Postgres integer
MAX_BODY_BYTES = 1_000_000
MAX_SUBJECT_CHARS = 255
MAX_RECIPIENT_CHARS = 2048
TRUNCATION_MARKER = "…"
# E.164: ``+`` then 8-15 digits, no leading zero. The one pattern: Twilio settings and the SMS channel.
E164 = re.compile(r"\+[1-9][0-9]{7,14}")
# What Postgres text and UTF-8 cannot hold: NUL and lone surrogates. The one check for it.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_DISPLAY_NAME = re.compile(r"<[^<>\s]+@[^<>\s]+>$")  # "Ops Team <ops@example.com>", "<ops@example.com>"


def validate_job_arguments(delivery_id: Any, channel: Any, attempt: Any) -> tuple[str, ChannelType, int]:
    """Raise ``ValueError`` for the three arguments a producer must get right; no I/O.

    The texts name the argument's type and length, never its value: a producer that swapped arguments
    would otherwise put a recipient into RQ's log and failed registry.
    """
    if not isinstance(delivery_id, str) or not 1 <= len(delivery_id) <= MAX_DELIVERY_ID_CHARS:
        raise ValueError(f"delivery_id must be a string of 1-255 characters; got {_shape(delivery_id)}")
    if not delivery_id.strip() or has_unstorable(delivery_id):
        raise ValueError("delivery_id must be printable text")
    try:
        channel_type = ChannelType(channel)
    except ValueError:
        raise ValueError(f"channel must be one of email, slack, sms; got {_shape(channel)}") from None
    if isinstance(attempt, bool) or not isinstance(attempt, int) or not 0 <= attempt <= MAX_ATTEMPT:
        raise ValueError(f"attempt must be an integer in 0..{MAX_ATTEMPT}; got {_shape(attempt)}")
    return delivery_id, channel_type, attempt


def _shape(value: Any) -> str:
    """A value described without its content: its type, and its length when it has one."""
    name = type(value).__name__
    if isinstance(value, str | bytes | list | tuple | dict):
        return f"{name} of length {len(value)}"
    return name


def has_unstorable(text: str) -> bool:
    """Lone surrogates and NUL cannot be stored in Postgres text or encoded as UTF-8."""
    return UNSTORABLE.search(text) is not None


def is_e164(number: str) -> bool:
    return E164.fullmatch(number) is not None


def coerce_text(name: str, value: Any) -> str:
    """``None`` means empty; any other non-string is invalid input."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInputError(f"invalid_input: {name} must be a string, got {type(value).__name__}")
    return value


def storable_payload(recipient: Any, subject: Any, body: Any) -> dict[str, str] | None:
    """The payload to store for a new row, or ``None`` when the arguments cannot be stored at all."""
    values = (recipient, subject, body)
    if not all(v is None or isinstance(v, str) for v in values):
        return None
    texts = ["" if v is None else v for v in values]
    if any(has_unstorable(t) for t in texts) or len(texts[2].encode("utf-8")) > MAX_BODY_BYTES:
        return None
    return {"recipient": texts[0], "subject": texts[1], "body": texts[2]}


def _check_characters(name: str, text: str, *, allow: str) -> None:
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        raise InvalidInputError(f"invalid_input: {name} contains lone surrogates")
    for ch in text:
        if ch not in allow and unicodedata.category(ch) == "Cc":
            raise InvalidInputError(f"invalid_input: {name} contains control character U+{ord(ch):04X}")


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters, ending in a visible marker when cut."""
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def fit_body(head: str, body: str, limit: int, *, cost: Callable[[str], int] = len) -> str:
    """``body`` cut so that ``cost(head + body)`` stays within ``limit``, ending in the marker when cut.

    ``cost`` measures text the way the provider counts it (characters, UTF-16 units, escaped length); it
    must be additive and at least 1 per character, so at most ``limit`` characters are ever examined.
    """
    budget = limit - cost(head)
    if len(body) <= budget and cost(body) <= budget:
        return body
    budget -= cost(TRUNCATION_MARKER)
    if budget <= 0:
        return TRUNCATION_MARKER if budget == 0 else ""
    kept: list[str] = []
    used = 0
    for ch in body[:budget]:
        used += cost(ch)
        if used > budget:
            break
        kept.append(ch)
    return "".join(kept) + TRUNCATION_MARKER


def utf16_units(text: str) -> int:
    """Length as SMS providers count it: characters outside the BMP take two UTF-16 code units."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def one_line(text: str) -> str:
    """Any whitespace run (CR/LF included) becomes one space: a header can never be injected."""
    return " ".join(text.split())


def check_body_size(text: str) -> str:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BODY_BYTES:
        raise InvalidInputError(f"invalid_input: body is larger than {MAX_BODY_BYTES} bytes")
    return text


def clean_subject(subject: Any) -> str:
    """Whitespace runs (CR/LF included) collapse to one space; other control characters are refused."""
    text = one_line(coerce_text("subject", subject))
    _check_characters("subject", text, allow="")
    return truncate(text, MAX_SUBJECT_CHARS)


def clean_body(body: Any) -> str:
    text = check_body_size(coerce_text("body", body))
    _check_characters("body", text, allow="\t\n\r")
    return text


def clean_recipient(recipient: Any) -> str:
    text = coerce_text("recipient", recipient).strip()
    if len(text) > MAX_RECIPIENT_CHARS:
        raise InvalidInputError(f"invalid_input: recipient is longer than {MAX_RECIPIENT_CHARS} characters")
    _check_characters("recipient", text, allow="")
    if _DISPLAY_NAME.search(text):
        raise InvalidInputError("invalid_recipient: display names are not accepted; give the bare address")
    if any(ch.isspace() for ch in text):
        raise InvalidInputError("invalid_input: recipient contains whitespace")
    return text


def clean_content(subject: Any, body: Any) -> tuple[str, str]:
    """Subject and body, cleaned; at least one of them must say something."""
    clean_s, clean_b = clean_subject(subject), clean_body(body)
    if not clean_s and not clean_b.strip():
        raise InvalidInputError("invalid_input: neither subject nor body")
    return clean_s, clean_b


SLACK_DEFAULT_RECIPIENTS = ("", "default")


def normalize_recipient(channel: ChannelType, recipient: str, *, default_webhook_url: str = "") -> str:
    """One recipient's identity: what its hash, its rate-limit bucket and its mask are computed from.

    E-mail trimmed and lower-cased; Slack trimmed, ``""``/``default`` -> ``SLACK_WEBHOOK_URL``, scheme and
    host lower-cased, query and fragment dropped; SMS the trimmed E.164 string. Total: any text comes back
    as text (a malformed URL is only trimmed), because it runs before the recipient is validated.
    """
    text = recipient.strip()
    if channel is ChannelType.EMAIL:
        return text.lower()
    if channel is not ChannelType.SLACK:
        return text
    if text in SLACK_DEFAULT_RECIPIENTS:
        text = default_webhook_url.strip()
        if not text:
            return "default"
    try:
        parts = urlsplit(text)
    except ValueError:  # "https://[::1" and other malformed URLs
        return text
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, "", ""))
