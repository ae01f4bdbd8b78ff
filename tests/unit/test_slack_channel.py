"""The Slack webhook channel against ``responses``: the exact JSON sent, and Slack's answers row by row."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses
from responses import matchers

from alert_worker.channels.slack import (
    MAX_BLOCKS,
    MAX_HEADER_CHARS,
    MAX_SECTION_CHARS,
    MAX_SLACK_TEXT_CHARS,
    SlackChannel,
    slack_blocks,
    slack_text,
)
from alert_worker.errors import (
    ChannelNotConfiguredError,
    PermanentDeliveryError,
    RecipientRejectedError,
    SlowDownError,
    TransientDeliveryError,
)
from alert_worker.models import ChannelType, Message
from alert_worker.settings import SlackSettings
from alert_worker.validation import TRUNCATION_MARKER

SECRET_PATH = "/services/T0001/B0001/canarySecretPathXYZ"
HOOK = f"https://hooks.slack.com{SECRET_PATH}"
DEFAULT_HOOK = "https://hooks.slack.com/services/T0002/B0002/defaultSecretPath"


def _message(recipient: str = HOOK, subject: str = "Disk full", body: str = "db-1 at 97%") -> Message:
    return Message(delivery_id="d-1", channel=ChannelType.SLACK, recipient=recipient, subject=subject, body=body)


def _channel(default: str = DEFAULT_HOOK, timeout: float = 4.0) -> SlackChannel:
    return SlackChannel(settings=SlackSettings(default, ("hooks.slack.com",)), timeout_seconds=timeout)


@pytest.fixture
def channel() -> Iterator[SlackChannel]:
    slack = _channel()
    yield slack
    slack.close()


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


def _json(text: str) -> Any:
    return matchers.json_params_matcher({"text": text}, strict_match=False)  # and "blocks", checked below


def test_send_posts_exact_json_and_returns_no_message_id(channel: SlackChannel, mocked: responses.RequestsMock) -> None:
    """``{"text": "subject\\nbody", "blocks": [...]}`` to the webhook; ``200 ok`` is delivered, no id."""
    mocked.post(HOOK, body="ok", status=200, match=[_json("Disk full\ndb-1 at 97%")])
    receipt = channel.send(channel.prepare(_message()))
    assert receipt.message_id is None


@pytest.mark.parametrize("recipient", ["", "default", "  default  "], ids=["empty", "default", "padded-default"])
def test_empty_or_default_recipient_posts_to_slack_webhook_url(
    channel: SlackChannel, mocked: responses.RequestsMock, recipient: str
) -> None:
    """An empty or ``default`` recipient means ``SLACK_WEBHOOK_URL``."""
    mocked.post(DEFAULT_HOOK, body="ok", match=[_json("Disk full\ndb-1 at 97%")])
    channel.send(channel.prepare(_message(recipient=recipient)))


@pytest.mark.parametrize("recipient", ["", "default"], ids=["empty", "default"])
def test_default_recipient_without_slack_webhook_url_is_channel_not_configured(recipient: str) -> None:
    """No default webhook configured: a clear permanent error that starts with ``channel_not_configured``."""
    with pytest.raises(ChannelNotConfiguredError) as caught:
        _channel(default="").prepare(_message(recipient=recipient))
    assert caught.value.reason.startswith("channel_not_configured")
    assert "SLACK_WEBHOOK_URL" in caught.value.reason


def test_disallowed_slack_webhook_url_setting_is_channel_not_configured() -> None:
    """A default webhook outside ``SLACK_WEBHOOK_HOSTS`` is a configuration problem, and not echoed."""
    with pytest.raises(ChannelNotConfiguredError) as caught:
        _channel(default="https://evil.example/services/x").prepare(_message(recipient=""))
    assert "evil" not in caught.value.reason


def test_request_uses_the_configured_timeout(channel: SlackChannel, mocked: responses.RequestsMock) -> None:
    """Every POST carries ``ALERT_SEND_TIMEOUT_SECONDS`` as one total deadline (connect, answer, body)."""
    seen: list[dict[str, Any]] = []

    def callback(request: Any) -> tuple[int, dict[str, str], str]:
        seen.append(request.req_kwargs)
        return 200, {}, "ok"

    mocked.add_callback(responses.POST, HOOK, callback=callback)
    channel.send(_message())
    assert seen[0]["timeout"].total == 4.0


@pytest.mark.parametrize(
    ("subject", "body", "text"),
    [
        ("Disk full", "db-1", "Disk full\ndb-1"),
        ("", "db-1", "db-1"),
        ("Disk full", "", "Disk full"),
        ("a<b>&c", "<!channel> <https://x|y>", "a&lt;b&gt;&amp;c\n&lt;!channel&gt; &lt;https://x|y&gt;"),
        ("*urgent* db", "x", "*urgent* db\nx"),
    ],
    ids=["subject-and-body", "body-only", "subject-only", "escapes-mentions-and-links", "stars-left-alone"],
)
def test_the_fallback_text_is_subject_newline_body_escaped(subject: str, body: str, text: str) -> None:
    """Empty parts leave no stray newline; ``& < >`` are escaped so an alert cannot ping ``@channel``; no
    ``*subject*`` wrapping for a ``*`` in the subject to break (the header block carries the subject)."""
    assert slack_text(subject, body) == text


@pytest.mark.parametrize("body", ["x" * 50_000, "<" * 20_000], ids=["plain", "every-char-escaped"])
def test_over_long_text_is_truncated_below_40000_with_marker(channel: SlackChannel, body: str) -> None:
    """The whole text, as sent (escaped), fits Slack's 40,000 characters and ends with the marker."""
    prepared = channel.prepare(_message(body=body))
    text = slack_text(prepared.subject, prepared.body)
    assert len(text) <= MAX_SLACK_TEXT_CHARS
    assert len(text) > MAX_SLACK_TEXT_CHARS - 5
    assert text.endswith(TRUNCATION_MARKER)


def test_text_at_exactly_the_limit_is_not_truncated(channel: SlackChannel) -> None:
    """40,000 characters fit: no marker."""
    body = "y" * (MAX_SLACK_TEXT_CHARS - len("S\n"))
    assert channel.prepare(_message(subject="S", body=body)).body == body


# status, body, Retry-After, expected class, exact reason, retry_after
SLACK_ANSWERS = [
    (429, "rate_limited", "12", SlowDownError, "slack 429", 12.0),
    (500, "rollup_error", None, TransientDeliveryError, "slack 500 rollup_error", None),
    (502, "<html>bad gateway</html>", None, TransientDeliveryError, "slack 502", None),
    (503, "", "30", TransientDeliveryError, "slack 503", 30.0),
    (408, "", None, TransientDeliveryError, "slack 408", None),
    (400, "invalid_payload", None, PermanentDeliveryError, "slack 400 invalid_payload", None),
    (400, "no_text", None, PermanentDeliveryError, "slack 400 no_text", None),
    (403, "invalid_token", None, PermanentDeliveryError, "slack 403 invalid_token", None),
    (403, "action_prohibited", None, PermanentDeliveryError, "slack 403 action_prohibited", None),
    (404, "no_service", None, RecipientRejectedError, "slack 404 no_service", None),
    (404, "channel_not_found", None, RecipientRejectedError, "slack 404 channel_not_found", None),
    (410, "channel_is_archived", None, RecipientRejectedError, "slack 410 channel_is_archived", None),
    (404, f"not found: {HOOK}", None, PermanentDeliveryError, "slack 404", None),
    (401, "whatever", None, PermanentDeliveryError, "slack 401", None),
    (301, "", None, PermanentDeliveryError, "slack 301 redirect refused", None),
    (302, "", None, PermanentDeliveryError, "slack 302 redirect refused", None),
    (200, "not ok", None, PermanentDeliveryError, "slack 200 unexpected response", None),
    (204, "", None, PermanentDeliveryError, "slack 204 unexpected response", None),
]
SLACK_IDS = [
    "429-retry-after",
    "500-rollup_error",
    "502-html",
    "503-retry-after",
    "408",
    "400-invalid_payload",
    "400-no_text",
    "403-invalid_token",
    "403-action_prohibited",
    "404-no_service",
    "404-channel_not_found",
    "410-channel_is_archived",
    "404-unknown-body-not-echoed",
    "401-unknown-word",
    "301-redirect",
    "302-redirect",
    "200-not-ok",
    "204-empty",
]


@pytest.mark.parametrize(("status", "body", "retry_after", "error", "reason", "delay"), SLACK_ANSWERS, ids=SLACK_IDS)
def test_slack_answer_is_classified(
    channel: SlackChannel,
    mocked: responses.RequestsMock,
    status: int,
    body: str,
    retry_after: str | None,
    error: type[Exception],
    reason: str,
    delay: float | None,
) -> None:
    """Each answer maps to transient or permanent with the status and a known reason word, never the URL."""
    headers = {"Retry-After": retry_after} if retry_after else {}
    if 300 <= status < 400:
        headers["Location"] = "https://evil.example/steal"
    mocked.post(HOOK, body=body, status=status, headers=headers, match=[_json("Disk full\ndb-1 at 97%")])
    with pytest.raises(error) as caught:
        channel.send(_message())
    assert type(caught.value) is error
    assert caught.value.reason == reason
    assert caught.value.retry_after == delay
    assert len(mocked.calls) == 1  # a redirect is never followed


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (requests.ConnectTimeout(f"connect timeout {HOOK}"), "slack timeout: ConnectTimeout"),
        (requests.ReadTimeout(f"read timeout {HOOK}"), "outcome_unknown: slack no answer after sending: ReadTimeout"),
        (
            requests.ConnectionError(f"Max retries exceeded with url: {SECRET_PATH}"),
            "slack connection error: ConnectionError",
        ),
        (requests.exceptions.SSLError(f"bad handshake {HOOK}"), "slack connection error: SSLError"),
        (requests.exceptions.ChunkedEncodingError(f"broken {HOOK}"),
         "outcome_unknown: slack answer unreadable after sending: ChunkedEncodingError"),
    ],
    ids=["connect-timeout", "read-timeout", "connection-error", "tls-error", "broken-response"],
)
def test_timeouts_and_connection_errors_are_transient_without_the_url(
    channel: SlackChannel, mocked: responses.RequestsMock, exc: Exception, reason: str
) -> None:
    """``str()`` of a requests error holds the webhook URL: only the class name is kept."""
    mocked.post(HOOK, body=exc)
    with pytest.raises(TransientDeliveryError) as caught:
        channel.send(_message())
    assert caught.value.reason == reason
    assert caught.value.__cause__ is exc


def test_one_session_per_job_created_lazily_and_closed(mocked: responses.RequestsMock) -> None:
    """No session until the first send; the same session for later sends; ``close`` releases it."""
    made: list[requests.Session] = []

    class RecordingSession(requests.Session):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    slack = SlackChannel(
        settings=SlackSettings(DEFAULT_HOOK, ("hooks.slack.com",)), timeout_seconds=3, session_factory=RecordingSession
    )
    slack.prepare(_message())
    assert made == []
    mocked.post(HOOK, body="ok")
    mocked.post(HOOK, body="ok")
    slack.send(_message())
    slack.send(_message())
    assert len(made) == 1
    slack.close()
    assert slack._session is None


def test_slack_is_enabled_without_a_default_webhook() -> None:
    """A recipient may carry its own webhook, so Slack never counts as missing settings."""
    assert SlackSettings("", ("hooks.slack.com",)).missing == ()


# -- Block Kit (issue 20 point 16) ------------------------------------------------------------------------
def test_the_subject_is_a_plain_text_header_so_stars_in_it_are_shown_as_typed() -> None:
    """``*urgent*`` was posted as ``**urgent* …*``: a plain_text header has no markup to break."""
    blocks = slack_blocks("*urgent* disk_full on db-1", "db-1 at 99%")
    header = {"type": "plain_text", "text": "*urgent* disk_full on db-1", "emoji": False}
    assert blocks[0] == {"type": "header", "text": header}
    assert blocks[1] == {"type": "section", "text": {"type": "mrkdwn", "text": "db-1 at 99%"}}


def test_a_subject_longer_than_the_header_limit_is_cut_with_a_marker() -> None:
    [header] = slack_blocks("s" * 400, "")
    assert len(header["text"]["text"]) == MAX_HEADER_CHARS and header["text"]["text"].endswith("…")


def test_the_body_is_escaped_in_its_sections_so_it_cannot_mention_the_channel() -> None:
    [section] = slack_blocks("", "<!channel> & <https://x|y>")
    assert section["text"]["text"] == "&lt;!channel&gt; &amp; &lt;https://x|y&gt;"


@pytest.mark.parametrize(
    "body",
    ["y" * 39_990, "&" * 7_990, "line of text\n" * 3_000, "<" * 3_001],
    ids=["plain", "every-char-escaped-5x", "many-lines", "one-past-a-section"],
)
def test_a_long_body_is_split_into_sections_within_slack_s_limits(body: str) -> None:
    """Each section at most 3,000 characters as sent (escaped), no escape cut in two, at most 50 blocks,
    and the sections together are the whole escaped body."""
    blocks = slack_blocks("Disk full", body)
    sections = [b["text"]["text"] for b in blocks[1:]]
    assert len(blocks) <= MAX_BLOCKS and all(b["type"] == "section" for b in blocks[1:])
    assert all(0 < len(text) <= MAX_SECTION_CHARS for text in sections)
    unescaped = [text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") for text in sections]
    assert "".join(unescaped) == body, "nothing lost, and every escape whole within its section"


def test_a_multi_line_body_is_cut_at_a_line_end() -> None:
    body = ("x" * 99 + "\n") * 60  # 6,000 characters: two sections
    sections = [b["text"]["text"] for b in slack_blocks("", body)]
    assert len(sections) == 2 and all(text.endswith("\n") for text in sections)


def test_send_posts_the_blocks_with_the_text_as_fallback(channel: SlackChannel, mocked: responses.RequestsMock) -> None:
    mocked.post(HOOK, body="ok")
    channel.send(_message(subject="*urgent*", body="db-1 <at> 99%"))
    sent = json.loads(mocked.calls[0].request.body or b"{}")
    assert sent["text"] == "*urgent*\ndb-1 &lt;at&gt; 99%"
    assert sent["blocks"] == slack_blocks("*urgent*", "db-1 <at> 99%")
