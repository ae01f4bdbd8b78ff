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


# C0 and C1 controls, DEL, line/paragraph separators, bidi overrides and lone surrogates: what can move the
# cursor, recolour, retitle or reorder an operator's terminal (docs/contract.md §7.6).
_TERMINAL_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """Text for a terminal: each control character as its escape (ESC is printed as the 4 characters ``\\x1b``).

    Everything else, backslashes included, is left as it is, so an ordinary id prints as itself.
    """
    return _TERMINAL_UNSAFE.sub(_escaped, text)


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
# A password may hold an unescaped '#', '/', '?' or '@' (generated passwords do). The authority of such a URL
# does not end at the first of those characters, so the userinfo is read as everything up to the LAST '@'
# (docs/contract.md §7.6). An '@' later in a path or query makes that reading swallow the host too: then the
# whole userinfo is masked, which is the safe side.
_SECRET_SPLIT = re.compile(r"[#/?@:]")
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&#]*)", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']*)", re.IGNORECASE)  # libpq key=value


def split_userinfo(url: str) -> tuple[str, str | None, str]:
    """``(scheme://, userinfo or None, the rest)`` of a URL, the userinfo ending at the last ``@``.

    ``("", None, url)`` when the text has no ``scheme://`` (a libpq ``key=value`` string, a typo).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme or "@" not in rest:
        return (f"{scheme}{sep}" if sep and scheme else ""), None, (rest if sep and scheme else url)
    userinfo, _, host_and_rest = rest.rpartition("@")
    return f"{scheme}://", userinfo, host_and_rest


def _authority_is_plain(url: str) -> bool:
    """True when the RFC reading (authority up to the first '/', '?' or '#') finds the same userinfo."""
    _, userinfo, _ = split_userinfo(url)
    return userinfo is None or not re.search(r"[/?#@]", userinfo)


def url_password(url: str) -> str:
    """The password in a DSN (up to the last '@'), or ``""``: what ``safe_error`` must mask.

    A ``password=`` query parameter counts too (libpq reads one).
    """
    prefix, userinfo, rest = split_userinfo(url)
    if userinfo is not None and ":" in userinfo:
        return userinfo.partition(":")[2]
    found = (_QUERY_PASSWORD if prefix else _KEYWORD_PASSWORD).search(rest)
    return found.group(2).strip("'") if found else ""


def password_misread(url: str, *, authority_ends: str, first_at: bool) -> bool:
    """True when a driver would read part of the URL's password as its host, port or path.

    The driver's authority ends at the first of ``authority_ends`` (libpq: ``/``; urllib and so redis-py:
    ``/?#``); ``first_at``: its userinfo ends at the first ``@`` (libpq), not the last (urllib). An unescaped
    '/', '?', '#' or '@' in a password does that; so does an '@' in a path or query (percent-encode it).
    """
    prefix, userinfo, _ = split_userinfo(url)
    if not prefix or userinfo is None:
        return False
    body = url[len(prefix) :]
    cut = min((i for i in (body.find(c) for c in authority_ends) if i >= 0), default=len(body))
    return "@" in body[cut:] or (first_at and body[:cut].count("@") > 1)


def redact_url(url: str) -> str:
    """Keep scheme, user, host, port and path of a DSN; the password becomes ``***``.

    When the userinfo holds a '/', '?', '#' or a second '@' (the user cannot be told from the password),
    the whole userinfo becomes ``***``.
    """
    prefix, userinfo, rest = split_userinfo(url)
    if not prefix:
        return _KEYWORD_PASSWORD.sub(r"\1***", url)
    try:
        urlsplit(f"{prefix}{rest}").port  # noqa: B018 - raises on a malformed host or port
    except ValueError:
        return "<malformed url>"
    rest = _QUERY_PASSWORD.sub(r"\1***", rest)
    if userinfo is None:
        return f"{prefix}{rest}"
    user, colon, _ = userinfo.partition(":")
    if not _authority_is_plain(url):
        return f"{prefix}***@{rest}"
    return f"{prefix}{user}:***@{rest}" if colon else f"{prefix}{userinfo}@{rest}"


def url_target(url: str) -> str:
    """``host:port/db`` of a URL for a log line; never credentials (``?`` when there is no host)."""
    prefix, _, rest = split_userinfo(url)
    if not prefix:
        return "?"
    try:
        parts = urlsplit(f"{prefix}{rest}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return "?"
    return f"{host}:{port or ''}{parts.path}" if host else "?"


def safe_error(exc: BaseException, *secrets: str) -> str:
    """``Type: first line`` of an error, bounded, with each known secret (a DSN password) masked.

    A driver that misreads a password holding '#', '/', '?' or '@' quotes a piece of it (as a port, a
    host): each such piece of three characters or more is masked too.
    """
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    pieces = {p for s in secrets if s for p in (s, *_SECRET_SPLIT.split(s)) if len(p) >= 3 or p == s}
    for secret in sorted(pieces, key=len, reverse=True):
        text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
