"""PII canary: planted recipients, text and secrets never reach a log line, a job result or an operator column.

Every channel runs its success path and each failure path (provider refusals, throttling, 5xx, timeouts,
connection errors whose text holds the URL, redirects, SSRF refusals, bad input, auth failures) through
``execute_delivery_job`` on real PostgreSQL, Redis and SMTP. All log output is captured twice: the JSON
lines exactly as the worker renders them (``configure_logging`` at DEBUG, into a buffer) and every
``logging`` record's full ``__dict__`` (caplog).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import requests
import structlog

from alert_worker import execute_delivery_job, logs
from tests.support.http_providers import MockedProviders, channel_env, mocked_providers
from tests.support.smtp import SmtpSink, free_port, running_smtp_sink

pytestmark = pytest.mark.integration

EMAIL_LOCAL = "canary.recipient.q7x"
EMAIL = f"{EMAIL_LOCAL}@example.com"
PHONE = "+15557770123"
SLACK_SECRET = "canarySlackPathSecret"
SLACK_HOOK = f"https://hooks.slack.com/services/TCANARY0/BCANARY0/{SLACK_SECRET}"
DEFAULT_SECRET = "canaryDefaultHookSecret"
SLACK_DEFAULT = f"https://hooks.slack.com/services/TCANARY1/BCANARY1/{DEFAULT_SECRET}"
SUBJECT = "canary-subject-5521"
BODY = "canary-body-text-8812 with detail"
TWILIO_TOKEN = "canarytwiliotoken0123456789abcde"
SMTP_PASSWORD = "canary-smtp-password-77"
WRONG_SMTP_PASSWORD = "canary-wrong-password-78"

CANARIES = [
    EMAIL_LOCAL,
    PHONE,
    PHONE[2:],
    "5557770123",
    SLACK_SECRET,
    "TCANARY0",
    "BCANARY0",
    DEFAULT_SECRET,
    "TCANARY1",
    SUBJECT,
    "canary-body-text",
    TWILIO_TOKEN,
    SMTP_PASSWORD,
    WRONG_SMTP_PASSWORD,
]


@pytest.fixture
def captured_logging(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[io.StringIO, list[logging.LogRecord]]]:
    """Production logging (the JSON renderer, into a buffer instead of stdout) at DEBUG, plus every record."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    rendered = io.StringIO()
    logs.configure_logging("json", level=logging.DEBUG, stream=rendered)
    root.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.DEBUG)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # the test's own SMTP server, not the worker
    yield rendered, caplog.records
    root.handlers[:], root.level = saved
    logging.getLogger("mail.log").setLevel(logging.NOTSET)
    structlog.reset_defaults()
    logs._configured = False


@pytest.fixture
def login_sink() -> Iterator[SmtpSink]:
    with running_smtp_sink(login=("alerts", SMTP_PASSWORD)) as sink:
        yield sink


@pytest.fixture
def providers(
    monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str], login_sink: SmtpSink
) -> Iterator[MockedProviders]:
    env = {
        **worker_env,
        **channel_env(slack_default=SLACK_DEFAULT, twilio_token=TWILIO_TOKEN),
        "SMTP_PORT": str(login_sink.port),
        "SMTP_USER": "alerts",
        "SMTP_PASSWORD": SMTP_PASSWORD,
        # every delivery here must reach its provider: no rate-limit deferrals
        **{f"ALERT_RATE_{c}_PER_MIN": "0" for c in ("EMAIL", "SLACK", "SMS", "GLOBAL")},
        **{f"ALERT_RATE_{c}_PER_RECIPIENT_HOUR": "0" for c in ("EMAIL", "SLACK", "SMS")},
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with mocked_providers() as mocked:
        yield mocked


def _leaks(text: str) -> list[str]:
    return [c for c in CANARIES if c in text]


def test_no_canary_reaches_logs_results_or_operator_columns(
    providers: MockedProviders,
    login_sink: SmtpSink,
    captured_logging: tuple[io.StringIO, list[logging.LogRecord]],
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    redis_client: Any,
) -> None:
    """Every channel, every failure path: the canaries are used (and sent) but never written anywhere else."""
    results: list[dict[str, Any]] = []
    n = 0

    def forget_feedback() -> None:
        """Each path must reach its provider: check, then drop, what provider feedback stored (§6.2)."""
        with psycopg.connect(database_url) as conn:
            for row in conn.execute("SELECT * FROM alert_suppressions").fetchall():
                assert _leaks(str(row)) == [], row
            conn.execute("DELETE FROM alert_suppressions")
        for pattern in ("alert:cooldown:*", "alert:pause*"):  # cooldowns and channel pauses (§7.7)
            for key in redis_client.scan_iter(pattern):
                assert _leaks(key.decode()) == [], key
                assert _leaks(str(redis_client.get(key))) == [], key
                redis_client.delete(key)

    def run(channel: str, recipient: Any, subject: Any = SUBJECT, body: Any = BODY) -> dict[str, Any]:
        nonlocal n
        n += 1
        result = dict(execute_delivery_job(f"canary-{n}", channel, recipient, subject, body))
        results.append(result)
        forget_feedback()
        return result

    # -- e-mail: delivered with login, then every failure
    assert run("email", EMAIL)["outcome"] == "delivered"
    login_sink.rcpt_replies.append(f"550 5.1.1 <{EMAIL}>: Recipient address rejected: {BODY}")
    assert run("email", EMAIL)["outcome"] == "poisoned"
    login_sink.data_replies.append(f"451 4.3.0 {EMAIL} temporarily deferred")
    assert run("email", EMAIL)["outcome"] == "retry_scheduled"
    login_sink.data_replies.append("DROP")
    assert run("email", EMAIL)["outcome"] == "retry_scheduled"
    login_sink.data_replies.append(f"554 5.7.1 message from {SUBJECT} rejected as spam")
    assert run("email", EMAIL)["outcome"] == "poisoned"
    run("email", f"{EMAIL},other@example.com")  # two recipients: invalid input
    run("email", EMAIL, subject=f"{SUBJECT}\x07")  # control character: invalid input
    monkeypatch.setenv("SMTP_PASSWORD", WRONG_SMTP_PASSWORD)
    refused = run("email", EMAIL)  # the channel's own settings: paused fleet-wide, the delivery deferred (§7.7)
    assert (refused["outcome"], str(refused["error"])[:15]) == ("retry_scheduled", "channel_paused:")
    monkeypatch.setenv("SMTP_PASSWORD", SMTP_PASSWORD)
    monkeypatch.setenv("SMTP_PORT", str(free_port()))
    assert run("email", EMAIL)["outcome"] == "retry_scheduled"

    # -- Slack: explicit and default webhook, then every failure
    assert run("slack", SLACK_HOOK)["outcome"] == "delivered"
    assert run("slack", "")["outcome"] == "delivered"
    slack_failures: list[Any] = [
        (404, "channel_not_found", {}),
        (500, f"upstream error for {SLACK_HOOK}: {BODY}", {}),
        (429, "rate_limited", {"Retry-After": "20"}),
        (302, "", {"Location": f"https://evil.example/?u={SLACK_HOOK}"}),
        (400, f"invalid_payload {SLACK_SECRET}", {}),
        requests.ConnectionError(f"HTTPSConnectionPool: Max retries exceeded with url: {SLACK_HOOK}"),
        requests.ReadTimeout(f"Read timed out. {SLACK_HOOK}"),
    ]
    for reply in slack_failures:
        providers.slack_replies.append(reply)
        assert run("slack", SLACK_HOOK)["outcome"] in ("poisoned", "retry_scheduled")
    run("slack", f"https://evil.example/services/TCANARY0/BCANARY0/{SLACK_SECRET}")  # SSRF refusal
    run("slack", f"https://user:{SLACK_SECRET}@hooks.slack.com/services/x")  # credentials in the URL
    run("slack", f"http://hooks.slack.com/services/TCANARY0/BCANARY0/{SLACK_SECRET}")  # plain http

    # -- SMS: delivered, then every failure
    assert run("sms", PHONE)["outcome"] == "delivered"
    sms_failures: list[Any] = [
        (400, f'{{"code": 21211, "message": "The \'To\' number {PHONE} is not valid", "status": 400}}', {}),
        (400, f'{{"code": 21610, "message": "{PHONE} unsubscribed", "status": 400}}', {}),
        (401, f'{{"code": 20003, "message": "Authenticate {TWILIO_TOKEN}", "status": 401}}', {}),
        (429, '{"code": 20429, "message": "Too Many Requests", "status": 429}', {"Retry-After": "15"}),
        (503, f"<html>{PHONE} unavailable</html>", {}),
        requests.ConnectionError(f"Max retries exceeded with url: /Messages.json?To={PHONE}"),
        requests.ConnectTimeout(f"timed out {PHONE}"),
    ]
    for reply in sms_failures:
        providers.twilio_replies.append(reply)
        assert run("sms", PHONE)["outcome"] in ("poisoned", "retry_scheduled")
    run("sms", PHONE[:-5])  # not E.164: invalid input
    run("sms", PHONE, subject="", body="")  # neither subject nor body

    assert providers.foreign == []
    assert len(providers.slack_requests) == 2 + len(slack_failures)
    assert len(providers.twilio_requests) == 1 + len(sms_failures)
    assert [c for c in CANARIES[:2] if any(c in m.rcpt_tos[0] for m in login_sink.accepted)] == [EMAIL_LOCAL]

    # -- nothing leaked: stdout JSON, every log record, results, operator columns
    rendered, records = captured_logging
    lines = rendered.getvalue()
    assert '"event": "delivery_poisoned"' in lines and '"event": "delivery_delivered"' in lines  # capture works
    assert _leaks(lines) == []
    for record in records:
        assert _leaks(str(record.__dict__)) == [], record.__dict__
    for result in results:
        assert _leaks(str(result)) == [], result
    with psycopg.connect(database_url) as conn:
        cursor = conn.execute("SELECT * FROM alert_deliveries ORDER BY id")
        columns = [d.name for d in cursor.description or ()]
        rows = cursor.fetchall()
    assert len(rows) == n
    for row in rows:
        shown = {k: v for k, v in zip(columns, row, strict=True) if k != "payload"}
        assert _leaks(str(shown)) == [], shown
