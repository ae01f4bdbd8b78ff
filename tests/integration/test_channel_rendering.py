"""What a person reads, end to end through ``execute_delivery_job`` on real Postgres and Redis: Slack
Block Kit, internationalized e-mail addresses, and ``status ID`` on an unknown outcome (issue 20 points 16, 17
and 8)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from alert_worker import execute_delivery_job
from tests.support.cli import InProcessCli
from tests.support.http_providers import MockedProviders, channel_env, mocked_providers
from tests.support.smtp import SmtpSink

pytestmark = pytest.mark.integration

SLACK_DEFAULT = "https://hooks.slack.com/services/T9/B9/defaultpath"


@pytest.fixture
def providers(monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str]) -> Iterator[MockedProviders]:
    for key, value in {**worker_env, **channel_env(slack_default=SLACK_DEFAULT, twilio_token="t" * 32)}.items():
        monkeypatch.setenv(key, value)
    with mocked_providers() as mocked:
        yield mocked


def test_a_slack_subject_with_stars_is_a_plain_text_header_and_the_body_a_section(providers: MockedProviders) -> None:
    result = execute_delivery_job("sl-1", "slack", "default", "*urgent* db_1 down", "replica <lag> & 5 s")
    assert result["outcome"] == "delivered"
    [request] = providers.slack_requests
    sent = json.loads(request.body or b"{}")
    assert sent["blocks"][0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "*urgent* db_1 down", "emoji": False},
    }
    assert sent["blocks"][1] == {"type": "section", "text": {"type": "mrkdwn", "text": "replica &lt;lag&gt; &amp; 5 s"}}
    assert sent["text"] == "*urgent* db_1 down\nreplica &lt;lag&gt; &amp; 5 s"


def test_a_long_slack_body_fits_slack_s_block_limits(providers: MockedProviders) -> None:
    result = execute_delivery_job("sl-2", "slack", "default", "Disk full", "y" * 100_000)
    assert result["outcome"] == "delivered"
    sent = json.loads(providers.slack_requests[0].body or b"{}")
    assert len(sent["blocks"]) <= 50
    assert all(len(b["text"]["text"]) <= 3000 for b in sent["blocks"] if b["type"] == "section")
    assert len(sent["text"]) <= 40_000


def test_an_idn_domain_is_delivered_in_its_ascii_form(providers: MockedProviders, smtp_sink: SmtpSink) -> None:
    result = execute_delivery_job("em-1", "email", "jo@bücher.de", "Disk full", "db-1 at 99%")
    assert result["outcome"] == "delivered", result
    [accepted] = smtp_sink.accepted
    assert accepted.rcpt_tos == ["jo@xn--bcher-kva.de"]


def test_a_utf8_local_part_is_no_longer_refused(providers: MockedProviders, smtp_sink: SmtpSink) -> None:
    """``jöhn@example.com`` was poisoned ``invalid_recipient``; the test sink offers SMTPUTF8."""
    result = execute_delivery_job("em-2", "email", "jöhn@example.com", "Disk full", "db-1 at 99%")
    assert result["outcome"] == "delivered", result
    assert smtp_sink.accepted[0].rcpt_tos == ["jöhn@example.com"]


@pytest.mark.parametrize(
    ("channel", "to", "says"),
    [("slack", "default", "posted again"), ("sms", "+15551234567", "Twilio is asked")],
    ids=["slack", "sms"],
)
def test_status_explains_an_unknown_outcome_for_the_delivery_s_own_channel(
    providers: MockedProviders,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    worker_env: dict[str, str],
    channel: str,
    to: str,
    says: str,
) -> None:
    """Only SMS is looked up before a resend; a Slack delivery's status no longer says it is."""
    replies = providers.slack_replies if channel == "slack" else providers.twilio_replies
    replies.append(requests.ReadTimeout("no answer"))
    assert execute_delivery_job("u-1", channel, to, "Disk full", "db-1")["outcome"] == "retry_scheduled"
    env = {**worker_env, **channel_env(slack_default=SLACK_DEFAULT, twilio_token="t" * 32)}
    view = json.loads(InProcessCli(monkeypatch, capsys, env)("status", "u-1", "--json").out)
    assert view["last_error"].startswith("outcome_unknown:")
    assert says in view["held_by"] and ("Twilio" in view["held_by"]) is (channel == "sms")
