"""Bad input of every kind, end to end through ``execute_delivery_job`` on real PostgreSQL and Redis.

Each case ends as a poisoned row with a clear, specific reason and nothing sent; only an unknown channel
or a malformed delivery id / attempt raises ``ValueError`` (docs/contract.md §1).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from alert_worker import execute_delivery_job
from tests.support.http_providers import MockedProviders, channel_env, mocked_providers
from tests.support.smtp import SmtpSink

pytestmark = pytest.mark.integration

SLACK_DEFAULT = "https://hooks.slack.com/services/T9/B9/defaultpath"
HOOK = "https://hooks.slack.com/services/T1/B1/recipientpath"
RECIPIENT = {"email": "ops@example.com", "slack": HOOK, "sms": "+15551234567"}


@pytest.fixture
def providers(monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str]) -> Iterator[MockedProviders]:
    env = {**worker_env, **channel_env(slack_default=SLACK_DEFAULT, twilio_token="t" * 32)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with mocked_providers() as mocked:
        yield mocked


def _row(database_url: str, delivery_id: str) -> tuple[Any, ...]:
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT status, error_message, recipient FROM alert_deliveries WHERE id = %s", (delivery_id,)
        ).fetchone()
    assert found is not None
    return tuple(found)


def _nothing_sent(providers: MockedProviders, smtp_sink: SmtpSink) -> bool:
    return not (providers.slack_requests or providers.twilio_requests or providers.foreign or smtp_sink.data_calls)


BIG = "x" * 1_000_001
# channel, recipient, subject, body, the reason's start
POISONED = [
    ("email", "", "s", "b", "invalid_recipient"),
    ("sms", "", "s", "b", "invalid_recipient: expected an E.164"),
    ("email", "not-an-address", "s", "b", "invalid_recipient"),
    ("email", "@example.com", "s", "b", "invalid_recipient"),
    ("email", "a@example.com,b@example.com", "s", "b", "invalid_recipient"),
    ("sms", "5551234567", "s", "b", "invalid_recipient: expected an E.164"),
    ("slack", "https://evil.example/hook", "s", "b", "invalid_recipient: slack webhook host"),
    ("slack", "http://169.254.169.254/latest/meta-data/", "s", "b", "invalid_recipient: slack webhook host"),
    ("slack", "https://u:p@hooks.slack.com/services/x", "s", "b", "invalid_recipient: slack webhook URL must not"),
    ("email", "a" * 3000 + "@example.com", "s", "b", "invalid_input: recipient is longer than 2048"),
    ("slack", "https://hooks.slack.com/" + "p" * 3000, "s", "b", "invalid_input: recipient is longer than 2048"),
    ("sms", "+1" + "5" * 3000, "s", "b", "invalid_input: recipient is longer than 2048"),
    ("email", RECIPIENT["email"], "s", BIG, "invalid_input: body is larger than 1000000 bytes"),
    ("sms", RECIPIENT["sms"], "s", BIG, "invalid_input: body is larger than 1000000 bytes"),
    ("slack", HOOK, "", "", "invalid_input: neither subject nor body"),
    ("email", RECIPIENT["email"], None, "  \n", "invalid_input: neither subject nor body"),
    ("email", RECIPIENT["email"], 42, "b", "invalid_input: subject must be a string, got int"),
    ("slack", HOOK, "s", {"x": 1}, "invalid_input: body must be a string, got dict"),
    ("sms", 15551234567, "s", "b", "invalid_input: recipient must be a string, got int"),
    ("email", RECIPIENT["email"], "s", b"bytes", "invalid_input: body must be a string, got bytes"),
    ("email", RECIPIENT["email"], "bell\x07", "b", "invalid_input: subject contains control character U+0007"),
    ("slack", HOOK, "s", "nul\x00", "invalid_input: body contains control character U+0000"),
    ("sms", RECIPIENT["sms"], "s", "esc\x1b[2J", "invalid_input: body contains control character U+001B"),
    ("email", "ops\x00@example.com", "s", "b", "invalid_input: recipient contains control character"),
    ("email", RECIPIENT["email"], "s\ud800", "b", "invalid_input: subject contains lone surrogates"),
    ("slack", HOOK, "s", "b\udc80", "invalid_input: body contains lone surrogates"),
    ("sms", "+1555\ud83d", "s", "b", "invalid_input: recipient contains lone surrogates"),
]
POISONED_IDS = [
    "email-empty-recipient",
    "sms-empty-recipient",
    "email-malformed",
    "email-no-local-part",
    "email-two-recipients",
    "sms-not-e164",
    "slack-foreign-host",
    "slack-metadata-ip",
    "slack-userinfo",
    "email-oversize-recipient",
    "slack-oversize-recipient",
    "sms-oversize-recipient",
    "email-body-over-1mb",
    "sms-body-over-1mb",
    "slack-neither-subject-nor-body",
    "email-none-subject-blank-body",
    "email-subject-int",
    "slack-body-dict",
    "sms-recipient-int",
    "email-body-bytes",
    "email-subject-bell",
    "slack-body-nul",
    "sms-body-escape",
    "email-recipient-nul",
    "email-subject-surrogate",
    "slack-body-surrogate",
    "sms-recipient-surrogate",
]


@pytest.mark.parametrize(("channel", "recipient", "subject", "body", "reason"), POISONED, ids=POISONED_IDS)
def test_bad_input_is_poisoned_with_a_clear_reason_and_nothing_sent(
    providers: MockedProviders,
    smtp_sink: SmtpSink,
    database_url: str,
    channel: str,
    recipient: Any,
    subject: Any,
    body: Any,
    reason: str,
) -> None:
    """No exception, outcome ``poisoned``, the row in ``poison`` with the same specific reason; no request."""
    result = execute_delivery_job("bad-1", channel, recipient, subject, body)
    assert result["outcome"] == "poisoned" and result["status"] == "poison" and result["success"] is False
    assert result["error"] is not None and result["error"].startswith(reason), result["error"]
    status, error, masked = _row(database_url, "bad-1")
    assert (status, error) == ("poison", result["error"])
    masked.encode("utf-8")
    assert _nothing_sent(providers, smtp_sink)


@pytest.mark.parametrize(
    ("delivery_id", "channel", "attempt"),
    [
        ("d", "fax", 0),
        ("", "email", 0),
        ("x" * 256, "email", 0),
        (7, "email", 0),
        ("d", "email", -1),
        ("d", "email", "2"),
        ("d", "email", None),
    ],
    ids=["unknown-channel", "empty-id", "id-256", "id-int", "attempt-negative", "attempt-str", "attempt-none"],
)
def test_only_channel_id_and_attempt_raise_value_error_and_create_nothing(
    providers: MockedProviders, smtp_sink: SmtpSink, database_url: str, delivery_id: Any, channel: Any, attempt: Any
) -> None:
    """A producer bug raises before any connection: no row, no request."""
    with pytest.raises(ValueError):
        execute_delivery_job(delivery_id, channel, "ops@example.com", "s", "b", attempt)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM alert_deliveries").fetchone() == (0,)
    assert _nothing_sent(providers, smtp_sink)


@pytest.mark.parametrize(
    ("channel", "subject", "body"),
    [
        ("email", "", "body only"),
        ("email", "subject only", ""),
        ("slack", "", "body only"),
        ("slack", "subject only", None),
        ("sms", None, "body only"),
        ("sms", "subject only", ""),
    ],
    ids=["email-no-subject", "email-no-body", "slack-no-subject", "slack-no-body", "sms-no-subject", "sms-no-body"],
)
def test_an_empty_subject_or_empty_body_alone_is_delivered(
    providers: MockedProviders, smtp_sink: SmtpSink, channel: str, subject: Any, body: Any
) -> None:
    """One of subject and body is enough."""
    result = execute_delivery_job("ok-1", channel, RECIPIENT[channel], subject, body)
    assert result["outcome"] == "delivered", result["error"]


@pytest.mark.parametrize("recipient", ["", "default", None], ids=["empty", "default", "none"])
def test_slack_empty_recipient_means_the_default_webhook(
    providers: MockedProviders, database_url: str, recipient: Any
) -> None:
    """Slack is the exception: an empty recipient is the configured default webhook, not bad input; the
    row's mask is that webhook's (the identity is the normalized recipient, docs/contract.md §6.2)."""
    result = execute_delivery_job("slack-default", "slack", recipient, "Disk full", "db-1")
    assert result["outcome"] == "delivered" and result["message_id"] is None
    assert [r.url for r in providers.slack_requests] == [SLACK_DEFAULT]
    assert _row(database_url, "slack-default")[2] == "hooks.slack.com/***"


@pytest.mark.parametrize(("channel", "limit"), [("slack", 40_000), ("sms", 1_600)], ids=["slack-40000", "sms-1600"])
def test_over_long_text_is_truncated_with_the_marker_and_delivered(
    providers: MockedProviders, channel: str, limit: int
) -> None:
    """Over-long text is cut to the provider's limit, ending in ``…``, and still delivered."""
    import json
    from urllib.parse import parse_qs

    result = execute_delivery_job("long-1", channel, RECIPIENT[channel], "Disk full", "y" * 100_000)
    assert result["outcome"] == "delivered"
    if channel == "slack":
        text = json.loads(providers.slack_requests[0].body or b"{}")["text"]
    else:
        raw = providers.twilio_requests[0].body
        text = parse_qs(raw if isinstance(raw, str) else (raw or b"").decode())["Body"][0]
    assert len(text) <= limit and text.endswith("…") and len(text) > limit - 5


def test_email_subject_over_255_is_truncated_with_the_marker(providers: MockedProviders, smtp_sink: SmtpSink) -> None:
    """The subject limit (255) applies on every channel; e-mail shows it in the header."""
    execute_delivery_job("subj-1", "email", RECIPIENT["email"], "s" * 400, "b")
    from email import message_from_bytes, policy

    [accepted] = smtp_sink.accepted
    subject = str(message_from_bytes(accepted.content, policy=policy.default)["Subject"])
    assert subject.endswith("…") and len(subject) == 255


@pytest.mark.parametrize("missing", ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM_NUMBER"])
def test_sms_without_a_twilio_setting_is_poisoned_channel_not_configured(
    providers: MockedProviders, monkeypatch: pytest.MonkeyPatch, database_url: str, missing: str
) -> None:
    """Any one of the three Twilio variables missing disables SMS: poisoned, no request."""
    monkeypatch.delenv(missing)
    result = execute_delivery_job("sms-off", "sms", RECIPIENT["sms"], "s", "b")
    assert (result["outcome"], result["error"]) == ("poisoned", "channel_not_configured: sms")
    assert _row(database_url, "sms-off")[:2] == ("poison", "channel_not_configured: sms")
    assert providers.twilio_requests == [] and providers.foreign == []
