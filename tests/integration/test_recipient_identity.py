"""Recipient identity (docs/contract.md §6.2) on the real PostgreSQL and Redis: variants of one recipient share
one per-recipient limit, so a limit of 1 per hour means one send, however the producer spells it."""

from __future__ import annotations

import psycopg
import pytest
import responses

from alert_worker import execute_delivery_job
from alert_worker.producer import send_alert
from tests.support.cli import InProcessCli
from tests.support.smtp import SmtpSink

HOOK = "https://hooks.slack.com/services/T000/B000/XXXXsecret"
SLACK_VARIANTS = [HOOK, HOOK + "?", HOOK + "#x", HOOK.replace("https://hooks.slack.com", "HTTPS://HOOKS.Slack.com"),
                  "", "default", " default"]


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str]) -> None:
    for key, value in worker_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SLACK_WEBHOOK_URL", HOOK)
    monkeypatch.setenv("ALERT_RATE_SLACK_PER_RECIPIENT_HOUR", "1")
    monkeypatch.setenv("ALERT_RATE_EMAIL_PER_RECIPIENT_HOUR", "1")


def _row_identity(database_url: str, delivery_id: str) -> tuple[str, str]:
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT recipient_hash, recipient FROM alert_deliveries WHERE id = %s", (delivery_id,)
        ).fetchone()
    assert found is not None, delivery_id
    return str(found[0]), str(found[1])


def _hashes(database_url: str, prefix: str) -> set[tuple[str, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT recipient_hash, recipient FROM alert_deliveries WHERE id LIKE %s", (f"{prefix}%",)
        ).fetchall()
    return {(str(h), str(r)) for h, r in rows}


def test_seven_spellings_of_one_webhook_under_a_limit_of_one_per_hour_make_one_post(database_url: str) -> None:
    """URL, URL?, URL#x, upper-cased scheme and host, "", default, " default": one POST, six deferrals."""
    with responses.RequestsMock() as mocked:
        mocked.add(responses.POST, HOOK, body="ok", status=200)
        results = [
            execute_delivery_job(f"hook-{n}", "slack", variant, "Disk full", "db-1")
            for n, variant in enumerate(SLACK_VARIANTS)
        ]
        assert len(mocked.calls) == 1
    assert [r["outcome"] for r in results].count("delivered") == 1
    deferred = [r for r in results if r["outcome"] != "delivered"]
    assert {(r["outcome"], r["error"]) for r in deferred} == {("retry_scheduled", "rate_limited: recipient limit")}
    [(_, masked)] = _hashes(database_url, "hook-")
    assert masked == "hooks.slack.com/***", "one hash and one mask for every spelling"


def test_email_addresses_differing_in_case_or_spaces_share_one_bucket(
    smtp_sink: SmtpSink, database_url: str
) -> None:
    """`Ops@Example.com`, ` ops@example.com ` and `OPS@EXAMPLE.COM`: one message, one hash, one mask."""
    variants = ["Ops@Example.com", " ops@example.com ", "OPS@EXAMPLE.COM"]
    results = [execute_delivery_job(f"mail-{n}", "email", v, "Disk full", "db-1") for n, v in enumerate(variants)]
    assert [r["outcome"] for r in results] == ["delivered", "retry_scheduled", "retry_scheduled"]
    assert len(smtp_sink.accepted) == 1
    [(_, masked)] = _hashes(database_url, "mail-")
    assert masked == "o***@example.com"


def test_send_and_a_job_store_one_hash_and_mask_for_one_email_recipient(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    worker_env: dict[str, str],
    smtp_sink: SmtpSink,
    database_url: str,
) -> None:
    """`alert-worker send --to " Ops@Example.COM "` and a job to `ops@example.com`: one recipient_hash."""
    cli = InProcessCli(monkeypatch, capsys, worker_env)
    sent = cli("send", "--channel", "email", "--to", " Ops@Example.COM ", "--subject", "s", "--id", "sent-mail")
    assert (sent.code, sent.last_line) == (0, "sent-mail"), sent.err
    execute_delivery_job("job-mail", "email", "ops@example.com", "Disk full", "db-1")
    assert _row_identity(database_url, "sent-mail") == _row_identity(database_url, "job-mail")
    assert _row_identity(database_url, "sent-mail")[1] == "o***@example.com"


def test_a_sent_slack_default_row_hashes_as_the_webhook_spelled_with_a_query_string(database_url: str) -> None:
    """send_alert to `default` stores the hash of SLACK_WEBHOOK_URL, as a job to `URL?x=1` does."""
    assert send_alert("slack", "default", "s", "b", delivery_id="sent-hook").created
    with responses.RequestsMock() as mocked:
        mocked.add(responses.POST, HOOK + "?x=1", body="ok", status=200)
        execute_delivery_job("job-hook", "slack", HOOK + "?x=1", "Disk full", "db-1")
    assert _row_identity(database_url, "sent-hook") == _row_identity(database_url, "job-hook")
