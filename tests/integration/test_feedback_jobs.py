"""Provider feedback through ``execute_delivery_job`` and the CLI, on the real PostgreSQL and Redis.

Slack and Twilio answer through ``responses`` (``tests/support/http_providers``); e-mail through the
loopback SMTP sink. Each test shows one rule of docs/contract.md §6.2 holding across two separate jobs, which
share nothing but Postgres and Redis.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
import redis

from alert_worker import execute_delivery_job
from tests.support.cli import InProcessCli
from tests.support.http_providers import SLACK_HOST, channel_env, mocked_providers
from tests.support.smtp import SmtpSink

HOOK = f"https://{SLACK_HOST}/services/T0/B0/feedbacksecret"
PHONE = "+15551234567"


@pytest.fixture
def env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, **channel_env(slack_default=HOOK, twilio_token="t" * 32),
            "ALERT_RATE_SLACK_PER_RECIPIENT_HOUR": "0", "ALERT_RATE_SMS_PER_RECIPIENT_HOUR": "0"}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str]) -> InProcessCli:
    return InProcessCli(monkeypatch, capsys, env)


def _row(database_url: str, delivery_id: str) -> dict[str, Any]:
    with psycopg.connect(database_url) as conn:
        cur = conn.execute(
            "SELECT status, attempts, deferrals, error_message, provider_message_id FROM alert_deliveries "
            "WHERE id = %s", (delivery_id,))
        found = cur.fetchone()
        assert found is not None and cur.description is not None
        return dict(zip([c.name for c in cur.description], found, strict=True))


def _suppressions(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return list(conn.execute(
            "SELECT channel, recipient, reason, source_delivery_id FROM alert_suppressions").fetchall())


# -- cooldown -----------------------------------------------------------------------------------------
def test_a_slack_429_holds_the_next_job_to_that_webhook_without_a_request(
    database_url: str, redis_client: redis.Redis
) -> None:
    """Job A gets 429 Retry-After 30; job B to the same webhook is deferred (no attempt, no request)."""
    with mocked_providers() as providers:
        providers.slack_replies.append((429, "rate_limited", {"Retry-After": "30"}))
        first = execute_delivery_job("a", "slack", HOOK, "s", "b")
        second = execute_delivery_job("b", "slack", HOOK, "s", "b")
        other = execute_delivery_job("c", "slack", f"https://{SLACK_HOST}/services/T0/B1/otherhook", "s", "b")
    assert first["outcome"] == "retry_scheduled" and first["error"] == "slack 429"
    assert second["outcome"] == "retry_scheduled"
    assert second["error"].startswith("rate_limited: cooldown, the slack provider asked to slow down")
    assert other["outcome"] == "delivered", "another webhook is not held"
    assert len(providers.slack_requests) == 2
    b = _row(database_url, "b")
    assert (b["status"], b["attempts"], b["deferrals"]) == ("pending", 0, 1)
    [key] = [k.decode() for k in redis_client.scan_iter("alert:cooldown:slack:*")]
    assert 25_000 < int(redis_client.pttl(key)) <= 30_000
    assert "feedbacksecret" not in key


def test_an_smtp_421_cools_the_relay_for_every_recipient(smtp_sink: SmtpSink, database_url: str) -> None:
    """421 4.7.0 from the server: the next job, to someone else on the same server, waits the default 30 s."""
    smtp_sink.data_replies.append("421 4.7.0 Try again later")
    execute_delivery_job("m1", "email", "a@example.com", "s", "b")
    held = execute_delivery_job("m2", "email", "b@example.com", "s", "b")
    assert held["error"].startswith("rate_limited: cooldown, the email provider")
    assert smtp_sink.data_calls == 1


# -- suppression --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "reason"),
    [((404, "channel_not_found", {}), "slack 404 channel_not_found"),
     ((410, "channel_is_archived", {}), "slack 410 channel_is_archived")],
    ids=["404-channel_not_found", "410-channel_is_archived"],
)
def test_a_gone_slack_channel_is_suppressed_and_the_next_job_is_poisoned_unsent(
    database_url: str, redis_client: redis.Redis, reply: Any, reason: str
) -> None:
    """The entry keeps the masked webhook, the reason and the delivery; the next job makes no request.

    A webhook given as the recipient: the configured default (HOOK) is never suppressed (§7.2)."""
    gone = f"https://{SLACK_HOST}/services/T0/B2/gonehook"
    with mocked_providers() as providers:
        providers.slack_replies.append(reply)
        first = execute_delivery_job("s1", "slack", gone, "s", "b")
        second = execute_delivery_job("s2", "slack", gone, "s", "b")
    assert first["outcome"] == "poisoned" and first["error"] == reason
    assert second["outcome"] == "poisoned" and second["error"] == f"suppressed: {reason}"
    assert len(providers.slack_requests) == 1
    assert _suppressions(database_url) == [("slack", "hooks.slack.com/***", reason, "s1")]
    assert redis_client.hget("alert:metrics:suppressed", "slack") == b"1"


def test_twilio_21610_suppresses_the_number(database_url: str) -> None:
    """STOP: the number is suppressed; the next alert to it costs no request."""
    with mocked_providers() as providers:
        providers.twilio_replies.append((400, json.dumps({"code": 21610, "message": "unsubscribed",
                                                         "status": 400}), {}))
        execute_delivery_job("t1", "sms", PHONE, "s", "b")
        second = execute_delivery_job("t2", "sms", PHONE, "s", "b")
    assert second["error"] == "suppressed: twilio 21610 recipient has unsubscribed (STOP)"
    assert len(providers.twilio_requests) == 1
    assert _suppressions(database_url)[0][:2] == ("sms", "***4567")


def test_an_smtp_5_1_1_suppresses_the_address(smtp_sink: SmtpSink, database_url: str) -> None:
    """No such user: the address is suppressed; the next delivery to it is not sent."""
    smtp_sink.rcpt_replies.append("550 5.1.1 no such user")
    execute_delivery_job("e1", "email", "gone@example.com", "s", "b")
    second = execute_delivery_job("e2", "email", "gone@example.com", "s", "b")
    assert second["error"].startswith("suppressed: smtp recipient refused 550 5.1.1")
    assert smtp_sink.accepted == [] and _suppressions(database_url)[0][1] == "g***@example.com"


# -- the CLI ------------------------------------------------------------------------------------------
def test_suppression_add_list_remove_are_idempotent_and_hold_deliveries(
    cli: InProcessCli, smtp_sink: SmtpSink, database_url: str
) -> None:
    """add twice, list (text and --json, masked only), a held delivery, remove twice; all exit 0."""
    assert cli("suppression", "add", "--channel", "email", "--to", "ops@example.com", "--reason", "left").code == 0
    again = cli("suppression", "add", "--channel", "email", "--to", "ops@example.com", "--reason", "other")
    assert again.code == 0 and again.out.startswith("already suppressed: email o***@example.com")
    listed = cli("suppression", "list", "--json")
    [entry] = json.loads(listed.out)
    assert set(entry) == {"channel", "recipient", "recipient_hash", "reason", "source_delivery_id", "created_at"}
    assert (entry["channel"], entry["recipient"], entry["reason"]) == ("email", "o***@example.com", "left")
    assert "ops@example.com" not in listed.out + cli("suppression", "list").out
    assert json.loads(cli("suppression", "list", "--channel", "sms", "--json").out) == []

    held = execute_delivery_job("h1", "email", "ops@example.com", "s", "b")
    assert held["error"] == "suppressed: left" and smtp_sink.accepted == []

    assert cli("suppression", "remove", "--channel", "email", "--to", "ops@example.com").out.startswith("removed")
    gone = cli("suppression", "remove", "--channel", "email", "--to", "ops@example.com")
    assert gone.code == 0 and gone.out.startswith("not suppressed")
    assert execute_delivery_job("h2", "email", "ops@example.com", "s", "b")["outcome"] == "delivered"


@pytest.mark.parametrize(
    ("channel", "typed", "delivered_to"),
    [
        ("email", " Ops@Example.COM ", "ops@example.com"),
        ("slack", "default", f"{HOOK}?utm=1#x"),
        ("slack", HOOK.replace("https://", "HTTPS://"), "default"),
    ],
    ids=["email-case-and-spaces", "slack-default-vs-query", "slack-scheme-case-vs-default"],
)
def test_a_suppression_added_by_hand_holds_every_spelling_of_the_recipient(
    cli: InProcessCli, smtp_sink: SmtpSink, channel: str, typed: str, delivered_to: str
) -> None:
    """An operator's entry is keyed on the normalized recipient, like the deliveries it must hold."""
    assert cli("suppression", "add", "--channel", channel, "--to", typed, "--reason", "by hand").code == 0
    with mocked_providers() as providers:
        held = execute_delivery_job(f"typed-{channel}", channel, delivered_to, "s", "b")
        assert held["outcome"] == "poisoned" and held["error"] == "suppressed: by hand"
        assert providers.slack_requests == [] and providers.foreign == [] and smtp_sink.accepted == []
    assert cli("suppression", "remove", "--channel", channel, "--to", delivered_to).out.startswith("removed")


def test_poison_replay_does_not_lift_a_suppression(cli: InProcessCli, smtp_sink: SmtpSink, database_url: str) -> None:
    """A replayed delivery to a suppressed recipient is poisoned again, unsent; removing the entry first works."""
    smtp_sink.rcpt_replies.append("550 5.1.1 no such user")
    execute_delivery_job("r1", "email", "gone@example.com", "s", "b")
    assert cli("poison", "replay", "r1").code == 0
    replayed = execute_delivery_job("r1", "email", "gone@example.com", "s", "b")
    assert replayed["outcome"] == "poisoned" and replayed["error"].startswith("suppressed: ")
    assert cli("suppression", "remove", "--channel", "email", "--to", "gone@example.com").code == 0
    assert cli("poison", "replay", "r1").code == 0
    assert execute_delivery_job("r1", "email", "gone@example.com", "s", "b")["outcome"] == "delivered"


def test_status_shows_what_held_a_delivery(cli: InProcessCli, database_url: str) -> None:
    """``status ID`` names the suppression that poisoned it."""
    cli("suppression", "add", "--channel", "sms", "--to", PHONE, "--reason", "asked to stop")
    execute_delivery_job("st1", "sms", PHONE, "s", "b")
    shown = cli("status", "st1")
    assert "suppressed: asked to stop" in shown.out
    assert json.loads(cli("status", "st1", "--json").out)["held_by"].startswith("the suppression list")


def test_status_shows_the_cooldown_holding_a_delivery(cli: InProcessCli, database_url: str) -> None:
    """A deferred delivery's status says a cooldown holds it and for how long."""
    with mocked_providers() as providers:
        providers.slack_replies.append((429, "rate_limited", {"Retry-After": "30"}))
        execute_delivery_job("c1", "slack", HOOK, "s", "b")
        execute_delivery_job("c2", "slack", HOOK, "s", "b")
    view = json.loads(cli("status", "c2", "--json").out)
    assert view["last_error"].startswith("rate_limited: cooldown, the slack provider asked to slow down (")
    assert view["held_by"].startswith("a fleet-wide cooldown")


# -- unknown outcome ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("listed", "posts"), [(True, 1), (False, 2)], ids=["found", "not-found"])
def test_an_sms_read_timeout_is_looked_up_by_the_next_job_before_posting(
    database_url: str, redis_client: redis.Redis, listed: bool, posts: int
) -> None:
    """Job 1 times out (``outcome_unknown:``, kept in Postgres); job 2 asks Twilio first: found -> no POST."""
    from datetime import UTC, datetime
    from email.utils import format_datetime

    import requests
    import responses

    from tests.support.http_providers import TWILIO_FROM, TWILIO_URL

    sent = {"sid": "SM5", "to": PHONE, "from": TWILIO_FROM, "body": "Disk: full", "status": "sent",
            "date_created": format_datetime(datetime.now(UTC), usegmt=True)}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.post(TWILIO_URL, body=requests.ReadTimeout("read timed out"))
        first = execute_delivery_job("u1", "sms", PHONE, "Disk", "full")
        assert first["error"] == "outcome_unknown: twilio no answer after sending: ReadTimeout"
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT count(*) FROM alert_unknown_outcomes").fetchone() == (1,)
            conn.execute("UPDATE alert_deliveries SET next_attempt_at = now() WHERE id = 'u1'")
        rsps.replace(responses.POST, TWILIO_URL, json={"sid": "SM-NEW", "status": "queued"}, status=201)
        rsps.get(TWILIO_URL, json={"messages": [sent] if listed else [], "next_page_uri": None, "page": 0,
                                   "page_size": 50, "uri": "/x"})
        second = execute_delivery_job("u1", "sms", PHONE, "Disk", "full", attempt=1)
        post_count = sum(1 for c in rsps.calls if c.request.method == "POST")
    assert second["outcome"] == "delivered" and second["message_id"] == ("SM5" if listed else "SM-NEW")
    assert post_count == posts
    row = _row(database_url, "u1")
    assert row["provider_message_id"] == second["message_id"]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM alert_unknown_outcomes").fetchone() == (0,)
    assert redis_client.hget("alert:metrics:unknown_outcomes", "sms") == b"1"
