"""Slack incoming webhooks over ``requests``: one POST of Block Kit per delivery.

The subject is a ``header`` block (plain text: a ``*`` or ``_`` in it is shown as typed), the body one or
more mrkdwn ``section`` blocks, and ``text`` (subject, newline, body) the notification fallback; all
within Slack's documented limits (``slack_blocks``).

The recipient is a webhook URL, or empty / ``default`` for ``SLACK_WEBHOOK_URL``. Before any request
the URL passes the SSRF guard (docs/contract.md §4): exact host match against ``SLACK_WEBHOOK_HOSTS``, ``https``
only (plain ``http`` only for an allowed loopback host), no credentials, no non-default port except on
loopback; redirects are never followed. The webhook path is a secret: no error built here contains a
URL, and ``requests`` exceptions (whose ``str()`` holds the full URL) are reduced to their class names.

Answers: ``200`` + ``ok`` delivered; ``408``/``429``/``5xx``, timeouts and connection errors transient
(``Retry-After`` honoured); ``3xx`` and every other ``4xx`` permanent, with Slack's reason word when it
is one of the documented ones. Every error answer (3xx/4xx/5xx) is ``definite``: Slack did not post it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import requests

from alert_worker.channels.base import Channel
from alert_worker.channels.http import map_request_errors, with_deadline
from alert_worker.digest import count_line, items, slack_digest, slack_digest_head, slack_entry
from alert_worker.errors import (
    ChannelNotConfiguredError,
    InvalidInputError,
    PermanentDeliveryError,
    RecipientRejectedError,
    SlowDownError,
    TransientDeliveryError,
)
from alert_worker.models import ChannelType, Message, SendReceipt
from alert_worker.retry import parse_retry_after
from alert_worker.settings import SlackSettings, is_loopback_host
from alert_worker.validation import fit_body

MAX_SLACK_TEXT_CHARS = 40_000  # the message's text (the fallback); the body fits 14 sections of 3,000
MAX_HEADER_CHARS = 150  # Block Kit: a header block's plain_text
MAX_SECTION_CHARS = 3_000  # Block Kit: a section block's text object
MAX_BLOCKS = 50  # Block Kit: blocks in one message
DEFAULT_RECIPIENTS = ("", "default")
_DEFAULT_PORTS = {"https": 443, "http": 80}
# The error words Slack documents for incoming webhooks; anything else is reduced to the status code.
KNOWN_SLACK_ERRORS = frozenset(
    {
        "invalid_payload",
        "invalid_token",
        "action_prohibited",
        "no_service",
        "no_service_id",
        "no_team",
        "team_disabled",
        "channel_not_found",
        "channel_is_archived",
        "user_not_found",
        "posting_to_general_channel_denied",
        "too_many_attachments",
        "no_text",
        "rollup_error",
        "no_active_hooks",
        "invalid_team",
    }
)
_TRANSIENT_STATUSES = frozenset({408, 429})
# Permanent answers about the webhook itself (the recipient): it goes on the suppression list.
RECIPIENT_GONE = frozenset({(404, "channel_not_found"), (404, "no_service"), (410, "channel_is_archived")})

# urllib3 logs the request line (with the secret webhook path) at DEBUG; keep it quiet.
logging.getLogger("urllib3").setLevel(logging.WARNING)


def check_webhook_url(url: str, allowed_hosts: tuple[str, ...]) -> str:
    """The URL itself if it may be posted to, else ``InvalidInputError`` (no request is made).

    The reason names the rule that failed, never the URL.
    """
    if not url or any(ch.isspace() or ch == "\\" or ord(ch) < 0x20 for ch in url):
        raise InvalidInputError("invalid_recipient: slack webhook URL is malformed")
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError as exc:
        raise InvalidInputError("invalid_recipient: slack webhook URL is malformed") from exc
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise InvalidInputError("invalid_recipient: slack webhook URL must not carry credentials")
    allowed = {h.strip().lower().strip("[]") for h in allowed_hosts}
    if not host or host not in allowed:
        raise InvalidInputError("invalid_recipient: slack webhook host is not in SLACK_WEBHOOK_HOSTS")
    scheme = parts.scheme.lower()
    loopback = is_loopback_host(host)
    if scheme != "https" and not (scheme == "http" and loopback):
        raise InvalidInputError("invalid_recipient: slack webhook URL must use https")
    if port is not None and port != _DEFAULT_PORTS[scheme] and not loopback:
        raise InvalidInputError("invalid_recipient: slack webhook URL must use the default port")
    return url


def _escape(text: str) -> str:
    """Slack's three control characters: stops ``<!channel>`` or ``<url|label>`` injection."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escaped_len(text: str) -> int:
    return len(text) + 4 * text.count("&") + 3 * text.count("<") + 3 * text.count(">")


def _head(subject: str, body: str) -> str:
    if not subject:
        return ""
    return f"{_escape(subject)}\n" if body else _escape(subject)


def slack_text(subject: str, body: str) -> str:
    """The message's ``text``, Slack's notification fallback: subject, newline, body, escaped.

    No ``*subject*`` markup: a ``*`` in the subject would break it. The blocks carry the formatting.
    """
    return _head(subject, body) + _escape(body)


def _chunks(body: str, limit: int) -> list[str]:
    """``body`` escaped, in pieces of at most ``limit`` characters, cut at a newline where one is near
    the end of a piece and never inside an escape (``&amp;``): each piece is escaped on its own."""
    pieces: list[str] = []
    rest = body
    while rest:
        size, taken = 0, 0
        for ch in rest:
            cost = _escaped_len(ch)
            if size + cost > limit:
                break
            size += cost
            taken += 1
        cut = rest.rfind("\n", 0, taken) + 1 if taken < len(rest) else taken
        if cut <= taken // 2:  # no newline in the second half of the piece: cut at the limit
            cut = taken
        pieces.append(_escape(rest[:cut]))
        rest = rest[cut:]
    return [piece for piece in pieces if piece.strip()]


def slack_blocks(subject: str, body: str) -> list[dict[str, Any]]:
    """Block Kit within Slack's documented limits: a ``header`` block (plain text, at most 150 characters,
    so no markup can break it) for the subject, then ``section`` blocks (mrkdwn, at most 3,000 characters
    each, escaped) for the body; at most 50 blocks."""
    blocks: list[dict[str, Any]] = []
    if subject:
        header = subject if len(subject) <= MAX_HEADER_CHARS else subject[: MAX_HEADER_CHARS - 1] + "…"
        blocks.append({"type": "header", "text": {"type": "plain_text", "text": header, "emoji": False}})
    for piece in _chunks(body, MAX_SECTION_CHARS)[: MAX_BLOCKS - len(blocks)]:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": piece}})
    return blocks


def alert_sections(m: Message) -> list[str]:
    """One carried alert as mrkdwn section texts of at most 3,000 characters each, escaped: its subject and
    its delivery id first (both short: always in the first section), then its body, split over as many
    sections as it needs."""
    raw = (f"{m.subject}\n" if m.subject else "") + f"id: {m.delivery_id}\n{m.body}"
    return _chunks(raw, MAX_SECTION_CHARS) or [_escape(f"id: {m.delivery_id}")]


def digest_blocks(message: Message) -> list[dict[str, Any]]:
    """A message carrying held alerts (§8): a header with the count, then each alert in full, in one or more
    sections (subject, delivery id, body; escaped, no markup a ``*`` could break). ``carried_fit`` carried
    only as many alerts as fit in 50 blocks."""
    listed = items(message)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": count_line(len(listed)), "emoji": False}}
    ]
    for m in listed:
        blocks.extend({"type": "section", "text": {"type": "mrkdwn", "text": t}} for t in alert_sections(m))
    return blocks


def carried_fit(message: Message, carried: Sequence[Message]) -> int:
    """How many of ``carried`` fit with ``message`` in one digest: at most 50 blocks and a text (the
    notification fallback) of at most 40,000 characters, every alert in full in both."""
    sep = len("\n\n")
    blocks = 1 + len(alert_sections(message))
    text = len(slack_entry(message, _escape))
    fit = 0
    for k, m in enumerate(carried, start=1):
        blocks += len(alert_sections(m))
        text += sep + len(slack_entry(m, _escape))
        if blocks > MAX_BLOCKS or len(slack_digest_head(k + 1)) + sep + text > MAX_SLACK_TEXT_CHARS:
            break
        fit = k
    return fit


def message_text(message: Message) -> str:
    """The posted text (the notification fallback): one alert, or, when it carries held alerts, the count
    and each one (§8)."""
    if message.carried:
        return slack_digest(message, MAX_SLACK_TEXT_CHARS, escape=_escape)
    return slack_text(message.subject, message.body)


def message_blocks(message: Message) -> list[dict[str, Any]]:
    return digest_blocks(message) if message.carried else slack_blocks(message.subject, message.body)


class SlackChannel(Channel):
    name = ChannelType.SLACK
    max_text_chars = MAX_SLACK_TEXT_CHARS

    def __init__(
        self,
        *,
        settings: SlackSettings,
        timeout_seconds: float,
        session_factory: type[requests.Session] = requests.Session,
    ) -> None:
        self._settings = settings
        self._timeout = timeout_seconds
        self._session_factory = session_factory
        self._session: requests.Session | None = None

    def webhook_url(self, recipient: str) -> str:
        """The URL a recipient stands for, checked by the SSRF guard."""
        if recipient.strip() in DEFAULT_RECIPIENTS:
            default = self._settings.default_webhook_url
            if not default:
                raise ChannelNotConfiguredError("slack (SLACK_WEBHOOK_URL is not set for a default recipient)")
            try:
                return check_webhook_url(default, self._settings.allowed_hosts)
            except InvalidInputError as exc:
                raise ChannelNotConfiguredError(f"slack (SLACK_WEBHOOK_URL rejected: {exc.reason})") from exc
        return check_webhook_url(recipient, self._settings.allowed_hosts)

    def carried_fit(self, message: Message, carried: Sequence[Message]) -> int:
        return carried_fit(message, carried)

    def prepare(self, message: Message) -> Message:
        """Resolve and check the webhook URL; cut the body so the whole text fits Slack's limit."""
        url = self.webhook_url(message.recipient)
        head = _head(message.subject, message.body)
        body = fit_body(head, message.body, self.max_text_chars, cost=_escaped_len)
        return replace(message, recipient=url, body=body)

    def send(self, message: Message) -> SendReceipt:
        url = self.webhook_url(message.recipient)
        text = message_text(message)
        if self._session is None:
            self._session = with_deadline(self._session_factory(), self._timeout)
        with map_request_errors("slack"):
            payload = {"text": text, "blocks": message_blocks(message)}
            response = self._session.post(url, json=payload, timeout=self._timeout, allow_redirects=False)
        try:
            return self._receipt(response)
        finally:
            response.close()

    @staticmethod
    def _receipt(response: requests.Response) -> SendReceipt:
        status = response.status_code
        word = response.text.strip()[:64]
        if status == 200 and word == "ok":
            return SendReceipt(message_id=None)
        label = f"slack {status} {word}" if word in KNOWN_SLACK_ERRORS else f"slack {status}"
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise SlowDownError(label, retry_after=retry_after, definite=True)
        if (status, word) in RECIPIENT_GONE:
            raise RecipientRejectedError(label, definite=True)
        if status in _TRANSIENT_STATUSES or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise TransientDeliveryError(label, retry_after=retry_after, definite=True)
        if 300 <= status < 400:
            raise PermanentDeliveryError(f"slack {status} redirect refused", definite=True)
        if 200 <= status < 300:
            raise PermanentDeliveryError(f"slack {status} unexpected response")  # 2xx: it may have posted
        raise PermanentDeliveryError(label, definite=True)

    def destination(self, message: Message) -> str:
        """The webhook URL: Slack rate-limits per webhook."""
        return self.webhook_url(message.recipient)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
