"""Property: random job arguments never crash the job, never strand a row, never reach a foreign host.

Real PostgreSQL, Redis and a loopback SMTP server; Slack and Twilio through ``responses`` with a trap for
every other host. Provider answers (success, throttling, 5xx, permanent refusals, drops) are drawn too.
"""

from __future__ import annotations

import itertools
from typing import Any

import psycopg
import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from alert_worker import execute_delivery_job
from tests.support.contract import RESULT_KEYS
from tests.support.http_providers import SLACK_HOST, MockedProviders, channel_env, mocked_providers
from tests.support.smtp import SmtpSink

pytestmark = pytest.mark.integration

NASTY = ["\ud800", "\udfff", "\x00", "\r\n", "\x1b[2J", "\u202e", "<!channel>", "&", "😀", " ", "\t", "é"]

nasty_text = st.lists(
    st.one_of(st.text(max_size=20), st.sampled_from(NASTY), st.characters(codec=None, exclude_categories=())),
    max_size=12,
).map("".join)
non_strings = st.one_of(st.none(), st.integers(), st.binary(max_size=8), st.floats(), st.just(["x"]), st.just({}))
GOOD_RECIPIENTS = {
    "email": ["ops@example.com", "first.last+tag@example.co.uk"],
    "slack": ["", "default", f"https://{SLACK_HOST}/services/T1/B1/fuzzpath"],
    "sms": ["+15551234567", "+447700900123"],
}
TRICKY_RECIPIENTS = [
    "a@b.c",
    "@example.com",
    "a@example.com,b@example.com",
    "Ops <ops@example.com>",
    "ops@example.com\r\nBcc: x@y.z",
    "+1555",
    "15551234567",
    "+0551234567",
    "",
    " default ",
    f"http://{SLACK_HOST}/services/T1/B1/x",
    "https://evil.example/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://127.0.0.1:6379/",
    f"https://user:pw@{SLACK_HOST}/x",
    f"https://{SLACK_HOST}@evil.example/x",
    f"https://{SLACK_HOST}.evil.example/x",
    f"https://{SLACK_HOST}:8443/x",
    "https://[::1",
    "x" * 3000,
]
FOREIGN_WEBHOOKS = [  # each must be refused without a request
    "https://evil.example/hook",
    f"https://{SLACK_HOST}.evil.example/x",
    "http://127.0.0.1:6379/",
    "https://169.254.169.254/latest/meta-data/",
    "https://[::1]:6379/",
    "https://10.0.0.1/hook",
    f"https://{SLACK_HOST.upper()}.evil.example/x",
    f"https://evil.example/{SLACK_HOST}/services/x",
]
recipient_kinds = {
    "good": lambda channel: st.sampled_from(GOOD_RECIPIENTS[channel]),
    "tricky": lambda channel: st.sampled_from(TRICKY_RECIPIENTS),
    "foreign-webhook": lambda channel: st.sampled_from(FOREIGN_WEBHOOKS),
    "nasty": lambda channel: nasty_text,
    "not-a-string": lambda channel: non_strings,
}
content_kinds = {
    "plain": st.sampled_from(["Disk full", "db-1 at 97%\nload 12", "", None]),
    "nasty": nasty_text,
    "not-a-string": non_strings,
    "sizes": st.sampled_from(["", "   ", "x" * 1_000_001, "y" * 50_000]),
}
good_ids = st.one_of(st.uuids().map(str), st.text(min_size=1, max_size=30))
bad_ids = st.sampled_from(["", " ", "x" * 256, "a\x00b", "a\ud800", 7, None, b"id"])
bad_channels = st.sampled_from(["fax", "EMAIL", "", None, 1])
good_attempts = st.sampled_from([0, 0, 0, 1, 2, 4, 5, 7])
bad_attempts = st.sampled_from([-1, None, True, "1", 1.0])
_ids = itertools.count()


@st.composite
def job_arguments(draw: st.DrawFn, channel_name: str) -> tuple[Any, ...]:
    """Mostly well-formed jobs with hostile recipients and text; sometimes broken ids, channels, attempts."""
    broken = draw(st.sampled_from(["nothing"] * 7 + ["id", "channel", "attempt"]))
    delivery_id: Any = draw(bad_ids) if broken == "id" else f"fz{next(_ids)}-{draw(good_ids)}"  # fresh id: no skips
    channel = draw(bad_channels) if broken == "channel" else channel_name
    kind = draw(st.sampled_from(["good", "good", "tricky", "foreign-webhook", "nasty", "not-a-string"]))
    recipient = draw(recipient_kinds[kind](channel_name))
    subject, body = (
        draw(content_kinds[draw(st.sampled_from(["plain", "plain", "nasty", "not-a-string", "sizes"]))])
        for _ in range(2)
    )
    attempt = draw(bad_attempts if broken == "attempt" else good_attempts)
    return delivery_id, channel, recipient, subject, body, attempt


http_replies = st.sampled_from(
    [
        None,
        (429, "rate_limited", {"Retry-After": "30"}),
        (503, "", {}),
        (404, "channel_not_found", {}),
        (302, "", {"Location": "http://169.254.169.254/"}),
        (400, '{"code": 21211, "message": "bad To", "status": 400}', {}),
        (401, '{"code": 20003, "message": "auth", "status": 401}', {}),
        requests.ConnectionError("down"),
        requests.ReadTimeout("slow"),
    ]
)
smtp_replies = st.sampled_from([None, "451 4.3.0 busy", "550 5.1.1 unknown user", "421 4.7.0 bye", "DROP"])


def _expect_value_error(delivery_id: Any, channel: Any, attempt: Any) -> bool:
    """docs/contract.md §1, restated independently of the code under test."""
    good_id = (
        isinstance(delivery_id, str)
        and 1 <= len(delivery_id) <= 255
        and bool(delivery_id.strip())
        and "\x00" not in delivery_id
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in delivery_id)
    )
    good_attempt = isinstance(attempt, int) and not isinstance(attempt, bool) and attempt >= 0
    return not (good_id and channel in ("email", "slack", "sms") and good_attempt)


@pytest.fixture
def fuzz_env(monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str]) -> None:
    env = {
        **worker_env,
        **channel_env(slack_default=f"https://{SLACK_HOST}/services/T0/B0/defaultpath", twilio_token="f" * 32),
        "ALERT_RATE_EMAIL_PER_MIN": "0",
        "ALERT_RATE_SLACK_PER_MIN": "0",
        "ALERT_RATE_SMS_PER_MIN": "0",
        "ALERT_RATE_EMAIL_PER_RECIPIENT_HOUR": "0",
        "ALERT_RATE_SLACK_PER_RECIPIENT_HOUR": "0",
        "ALERT_RATE_SMS_PER_RECIPIENT_HOUR": "0",
        "ALERT_RATE_GLOBAL_PER_MIN": "0",
        "ALERT_SEND_TIMEOUT_SECONDS": "2",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def _check_rows(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT id, status, next_attempt_at, payload IS NULL, error_message FROM alert_deliveries"
        ).fetchall()
    for delivery_id, status, next_at, payload_gone, error in rows:
        assert status in ("delivered", "poison", "failed", "pending"), (delivery_id, status)
        if status == "pending":
            assert next_at is not None, f"{delivery_id!r} pending without next_attempt_at"
        if status == "delivered":
            assert payload_gone
        if error is not None:
            error.encode("utf-8")


@pytest.mark.parametrize("channel_name", ["email", "slack", "sms"])
@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), http_reply=http_replies, smtp_reply=smtp_replies)
def test_random_job_arguments_end_in_a_safe_state(
    channel_name: str,
    fuzz_env: None,
    database_url: str,
    smtp_sink: SmtpSink,
    data: st.DataObject,
    http_reply: Any,
    smtp_reply: str | None,
) -> None:
    """Only ValueError (bad channel/id/attempt) escapes; rows end terminal or scheduled; no foreign host."""
    delivery_id, channel, recipient, subject, body, attempt = data.draw(job_arguments(channel_name))
    smtp_sink.data_replies.clear()
    if smtp_reply:
        smtp_sink.data_replies.append(smtp_reply)
    with mocked_providers() as providers:
        if http_reply is not None:
            providers.slack_replies.append(http_reply)
            providers.twilio_replies.append(http_reply)
        expect_error = _expect_value_error(delivery_id, channel, attempt)
        try:
            result = execute_delivery_job(delivery_id, channel, recipient, subject, body, attempt)
        except ValueError:
            event("ValueError")
            assert expect_error, "ValueError for arguments the contract accepts"
        else:
            assert not expect_error, "bad channel/id/attempt did not raise ValueError"
            event(f"{result['channel']} {result['outcome']}")
            assert set(result) == RESULT_KEYS
            assert all(v is None or isinstance(v, str | bool) for v in result.values())
            assert result["outcome"] in ("delivered", "retry_scheduled", "poisoned", "skipped")
            assert result["status"] != "in_progress" or result["outcome"] == "skipped"
        _assert_only_allowlisted(providers)
    _check_rows(database_url)


def _assert_only_allowlisted(providers: MockedProviders) -> None:
    assert providers.foreign == [], f"requests to hosts outside the allowlist: {providers.foreign}"
    for request in providers.slack_requests:
        assert request.url is not None and request.url.startswith(f"https://{SLACK_HOST}/")
