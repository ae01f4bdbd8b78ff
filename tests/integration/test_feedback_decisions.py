"""Limits, suppression and cooldown decide on what the provider said (docs/contract.md §7.2).

Through ``execute_delivery_job`` on the real PostgreSQL and Redis, with Slack and Twilio answered by
``responses`` (``tests/support/http_providers``), a real refused TCP port, and the loopback SMTP server:

- a send the provider refused or never received gives its rate-limit slots back; an unknown outcome keeps them;
- a relay refusing the *sender* at RCPT TO suppresses no recipient;
- the configured default webhook is never suppressed; ``suppression remove --hash`` needs no channel settings;
- a Slack 429 cools every spelling of the webhook.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
import redis
import requests
from structlog.testing import capture_logs

from alert_worker import execute_delivery_job
from tests.support.cli import InProcessCli
from tests.support.http_providers import SLACK_HOST, channel_env, mocked_providers
from tests.support.processes import free_port
from tests.support.smtp import SmtpSink

HOOK = f"https://{SLACK_HOST}/services/T0/B0/decisionsecret"
PHONE = "+15551234567"
SENDER_REJECTED = "550 5.1.0 <alerts@example.org>: Sender address rejected: User unknown in local recipient table"


@pytest.fixture
def env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, **channel_env(slack_default=HOOK, twilio_token="t" * 32)}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def _row(database_url: str, delivery_id: str) -> dict[str, Any]:
    with psycopg.connect(database_url) as conn:
        cur = conn.execute(
            "SELECT status, attempts, deferrals, error_message FROM alert_deliveries WHERE id = %s", (delivery_id,))
        found = cur.fetchone()
        assert found is not None and cur.description is not None
        return dict(zip([c.name for c in cur.description], found, strict=True))


def _make_due(database_url: str, delivery_id: str) -> None:
    """Skip the retry backoff: the next job for the row runs now."""
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE alert_deliveries SET next_attempt_at = now() WHERE id = %s", (delivery_id,))


def _suppressions(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return list(conn.execute("SELECT channel, recipient, reason FROM alert_suppressions").fetchall())


def _fail_three_times(database_url: str, delivery_id: str, channel: str, to: str) -> list[dict[str, Any]]:
    results = []
    for attempt in range(3):
        results.append(dict(execute_delivery_job(delivery_id, channel, to, "Disk", "full", attempt=attempt)))
        _make_due(database_url, delivery_id)
    return results


# -- rate-limit slots ---------------------------------------------------------------------------------
def test_three_failed_sms_attempts_never_push_the_recipients_next_page_back(
    database_url: str, redis_client: redis.Redis
) -> None:
    """SMS default 3 per recipient per hour: three Twilio 503s, then the next page to that number is sent."""
    with mocked_providers() as providers:
        providers.twilio_replies.extend([(503, json.dumps({"code": 20500, "status": 503}), {})] * 3)
        failed = _fail_three_times(database_url, "page-1", "sms", PHONE)
        nxt = execute_delivery_job("page-2", "sms", PHONE, "DB", "down")
        retried = execute_delivery_job("page-1", "sms", PHONE, "Disk", "full", attempt=3)
    assert [r["error"] for r in failed] == ["twilio 503 server error (code 20500)"] * 3
    assert nxt["outcome"] == "delivered", nxt["error"]
    assert retried["outcome"] == "delivered", "the failed delivery's own retry is not deferred either"
    assert len(providers.twilio_requests) == 5
    [key] = list(redis_client.scan_iter("alert:rl:recipient:sms:*"))
    assert redis_client.zcard(key) == 2, "only the two accepted sends count against the number"
    assert redis_client.zcard("alert:rl:channel:sms") == 2 and redis_client.zcard("alert:rl:global") == 2


def test_a_refused_connection_gives_its_slot_back(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A webhook on a closed loopback port, one send per hour allowed: every attempt still gets to try."""
    monkeypatch.setenv("SLACK_WEBHOOK_HOSTS", "127.0.0.1")
    monkeypatch.setenv("ALERT_RATE_SLACK_PER_RECIPIENT_HOUR", "1")
    closed = f"http://127.0.0.1:{free_port()}/services/T0/B0/closed"
    results = _fail_three_times(database_url, "refused", "slack", closed)
    assert [r["error"] for r in results] == ["slack connection error: ConnectionError"] * 3
    assert _row(database_url, "refused")["deferrals"] == 0


def test_an_unknown_outcome_keeps_its_slot(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read timeout may have posted: with one send per hour, the next alert to that webhook waits."""
    monkeypatch.setenv("ALERT_RATE_SLACK_PER_RECIPIENT_HOUR", "1")
    with mocked_providers() as providers:
        providers.slack_replies.append(requests.ReadTimeout("read timed out"))
        first = execute_delivery_job("maybe", "slack", HOOK, "s", "b")
        second = execute_delivery_job("after", "slack", HOOK, "s", "b")
    assert first["error"].startswith("outcome_unknown:")
    assert second["outcome"] == "retry_scheduled" and second["error"].startswith("rate_limited")
    assert len(providers.slack_requests) == 1


def test_an_smtp_refusal_before_data_gives_its_slot_back(
    smtp_sink: SmtpSink, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One e-mail per recipient per hour: a 450 at RCPT TO, then the retry is sent, not deferred an hour."""
    monkeypatch.setenv("ALERT_RATE_EMAIL_PER_RECIPIENT_HOUR", "1")
    smtp_sink.rcpt_replies.append("450 4.2.1 Mailbox busy, try later")
    first = execute_delivery_job("busy", "email", "oncall@example.com", "s", "b")
    _make_due(database_url, "busy")
    second = execute_delivery_job("busy", "email", "oncall@example.com", "s", "b", attempt=1)
    assert first["outcome"] == "retry_scheduled" and first["error"].startswith("smtp recipient refused 450")
    assert second["outcome"] == "delivered", second["error"]


# -- suppression --------------------------------------------------------------------------------------
def test_a_relay_rejecting_the_sender_at_rcpt_suppresses_no_recipient(smtp_sink: SmtpSink, database_url: str) -> None:
    """Postfix reports a bad ALERTS_FROM_EMAIL at RCPT TO as 550 5.1.0: the alert is poisoned, nobody suppressed."""
    oncall = ["alice@example.com", "bob@example.com"]
    for n, rcpt in enumerate(oncall):
        smtp_sink.rcpt_replies.append(SENDER_REJECTED)
        result = execute_delivery_job(f"bad-from-{n}", "email", rcpt, "Disk full", "db-1 99%")
        assert result["outcome"] == "poisoned" and result["error"].startswith("smtp recipient refused 550 5.1.0")
    assert _suppressions(database_url) == []
    after = [execute_delivery_job(f"fixed-{n}", "email", rcpt, "DB down", "db-1") for n, rcpt in enumerate(oncall)]
    assert [r["outcome"] for r in after] == ["delivered", "delivered"]
    assert len(smtp_sink.accepted) == 2


def test_an_smtp_5_1_1_at_rcpt_about_the_recipient_still_suppresses(smtp_sink: SmtpSink, database_url: str) -> None:
    smtp_sink.rcpt_replies.append("550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown")
    execute_delivery_job("gone-1", "email", "gone@example.com", "s", "b")
    assert [s[:2] for s in _suppressions(database_url)] == [("email", "g***@example.com")]


@pytest.mark.parametrize("recipient", ["default", "", HOOK + "?x=1"], ids=["default", "empty", "the-url-spelled-out"])
def test_a_404_from_the_default_webhook_poisons_that_delivery_and_suppresses_nothing(
    database_url: str, recipient: str
) -> None:
    """The operator's own SLACK_WEBHOOK_URL: its 404 is logged at error level; the next alert to it is sent."""
    with mocked_providers() as providers:
        execute_delivery_job("warm-up", "slack", "default", "s", "b")  # logging configured before capturing
        providers.slack_replies.append((404, "no_service", {}))
        with capture_logs() as logs:
            first = execute_delivery_job("d-404", "slack", recipient, "Disk full", "alert 0")
        nxt = execute_delivery_job("d-next", "slack", "default", "Disk full", "alert 1")
    assert first["outcome"] == "poisoned" and first["error"] == "slack 404 no_service"
    assert [(e["log_level"], e["reason"]) for e in logs if e["event"] == "default_webhook_rejected"] == [
        ("error", "slack 404 no_service")
    ]
    assert _suppressions(database_url) == []
    assert nxt["outcome"] == "delivered" and len(providers.slack_requests) == 3


@pytest.mark.parametrize(
    ("source_delivery_id", "outcome"),
    [("d-old-2", "delivered"), (None, "poisoned")],
    ids=["provider-added-by-an-earlier-release-is-ignored", "operator-added-still-holds"],
)
def test_only_an_operators_entry_holds_the_default_webhook(
    worker_cli: InProcessCli, database_url: str, source_delivery_id: str | None, outcome: str
) -> None:
    """An earlier release suppressed SLACK_WEBHOOK_URL on its 404 (source_delivery_id set): that entry no
    longer holds it. An entry the operator added (no source delivery) still does."""
    added = worker_cli("suppression", "add", "--channel", "slack", "--to", "default", "--reason", "no_service")
    assert added.code == 0
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE alert_suppressions SET source_delivery_id = %s", (source_delivery_id,))
    with mocked_providers() as providers:
        result = execute_delivery_job("after-upgrade", "slack", "default", "Disk full", "db-1")
    assert result["outcome"] == outcome
    assert len(providers.slack_requests) == (1 if outcome == "delivered" else 0)
    assert len(_suppressions(database_url)) == 1, "the entry itself is left for the operator"


def test_a_404_from_a_webhook_given_as_the_recipient_still_suppresses_it(database_url: str) -> None:
    other = f"https://{SLACK_HOST}/services/T0/B9/otherhook"
    with mocked_providers() as providers:
        providers.slack_replies.append((404, "channel_not_found", {}))
        execute_delivery_job("o-1", "slack", other, "s", "b")
        second = execute_delivery_job("o-2", "slack", other, "s", "b")
    assert second["error"] == "suppressed: slack 404 channel_not_found"
    assert len(providers.slack_requests) == 1


# -- suppression remove --hash ------------------------------------------------------------------------
@pytest.fixture
def operator_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], database_url: str, redis_url: str
) -> InProcessCli:
    """An operator's shell: the database and the hash secret, no channel settings at all."""
    return InProcessCli(monkeypatch, capsys, {"DATABASE_URL": database_url, "REDIS_URL": redis_url,
                                              "ALERT_RECIPIENT_HASH_SECRET": "test-secret"})


@pytest.fixture
def worker_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str]
) -> InProcessCli:
    """A worker host's shell: SLACK_WEBHOOK_URL and every other channel setting."""
    return InProcessCli(monkeypatch, capsys, env)


def test_suppression_list_prints_the_hash_that_remove_takes_without_any_channel_setting(
    worker_cli: InProcessCli, operator_cli: InProcessCli, database_url: str
) -> None:
    """An entry for the default webhook (added by hand on a worker host) is lifted from a shell without it."""
    assert worker_cli("suppression", "add", "--channel", "slack", "--to", "default", "--reason", "r").code == 0
    [entry] = json.loads(operator_cli("suppression", "list", "--json").out)
    assert set(entry) == {"channel", "recipient", "recipient_hash", "reason", "source_delivery_id", "created_at"}
    rhash = entry["recipient_hash"]
    assert rhash in operator_cli("suppression", "list").out
    removed = operator_cli("suppression", "remove", "--channel", "slack", "--hash", rhash)
    assert (removed.code, removed.out.strip()) == (0, f"removed: slack {rhash}")
    again = operator_cli("suppression", "remove", "--channel", "slack", "--hash", rhash)
    assert (again.code, again.out.strip()) == (0, f"not suppressed: slack {rhash}")
    assert _suppressions(database_url) == []


def test_suppression_remove_to_default_without_slack_webhook_url_says_what_to_do(
    worker_cli: InProcessCli, operator_cli: InProcessCli, database_url: str
) -> None:
    """Never a misleading "not suppressed": `default` cannot be resolved here, so it says so and exits 1."""
    worker_cli("suppression", "add", "--channel", "slack", "--to", "default", "--reason", "r")
    refused = operator_cli("suppression", "remove", "--channel", "slack", "--to", "default")
    assert refused.code == 1 and "not suppressed" not in refused.out
    assert "SLACK_WEBHOOK_URL" in refused.err and "--hash" in refused.err
    assert len(_suppressions(database_url)) == 1
    assert worker_cli("suppression", "remove", "--channel", "slack", "--to", "default").out.startswith("removed")


@pytest.mark.parametrize("bad", ["default", "12345", "g" * 16, "ab" * 9], ids=["word", "short", "not-hex", "long"])
def test_suppression_remove_refuses_a_hash_that_cannot_be_one(operator_cli: InProcessCli, bad: str) -> None:
    refused = operator_cli("suppression", "remove", "--channel", "slack", "--hash", bad)
    assert refused.code == 1 and "--hash" in refused.err and bad not in refused.err


# -- cooldown -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "variant", [HOOK + "?x=1", HOOK + "#frag", HOOK.replace("https://hooks", "HTTPS://HOOKS"), "default"],
    ids=["query", "fragment", "scheme-and-host-case", "default"],
)
def test_a_slack_429_cools_every_spelling_of_the_webhook(
    database_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    """One webhook, one cooldown key: the variant is deferred with no request and no attempt used."""
    monkeypatch.setenv("ALERT_RATE_SLACK_PER_RECIPIENT_HOUR", "0")
    with mocked_providers() as providers:
        providers.slack_replies.append((429, "rate_limited", {"Retry-After": "600"}))
        execute_delivery_job("cool-1", "slack", HOOK, "s", "b")
        held = execute_delivery_job("cool-2", "slack", variant, "s", "b")
    assert held["outcome"] == "retry_scheduled"
    assert held["error"].startswith("rate_limited: cooldown, the slack provider asked to slow down")
    assert len(providers.slack_requests) == 1
    assert (_row(database_url, "cool-2")["attempts"], _row(database_url, "cool-2")["deferrals"]) == (0, 1)
    assert len(list(redis_client.scan_iter("alert:cooldown:slack:*"))) == 1
