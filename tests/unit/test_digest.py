"""The texts of a message that carries held alerts (docs/contract.md §8), per channel, and what "held" means."""

from __future__ import annotations

import pytest

from alert_worker.channels.email import EmailChannel, serialize
from alert_worker.channels.slack import MAX_SLACK_TEXT_CHARS
from alert_worker.channels.slack import message_text as slack_message_text
from alert_worker.channels.sms import MAX_SMS_UNITS
from alert_worker.channels.sms import message_text as sms_message_text
from alert_worker.digest import carried_ids_header, fit_listing, is_held
from alert_worker.models import ChannelType, Message
from alert_worker.settings import SmtpSettings
from alert_worker.validation import utf16_units


def _storm(channel: ChannelType, n: int, *, subject: str = "db-{i} disk full", body: str = "at 9{i}%") -> Message:
    """A carrier (alert 0) carrying alerts 1..n-1."""
    alerts = [
        Message(f"d-{i}", channel, "ops@example.com", subject.format(i=i), body.format(i=i % 10)) for i in range(n)
    ]
    return Message(**{**alerts[0].__dict__, "carried": tuple(alerts[1:])})


def test_an_sms_says_how_many_alerts_then_lists_every_subject_carrier_first() -> None:
    text = sms_message_text(_storm(ChannelType.SMS, 3))
    assert text == "3 alerts:\n- db-0 disk full\n- db-1 disk full\n- db-2 disk full"


def test_an_sms_too_long_for_one_message_is_cut_to_1600_units_with_and_k_more() -> None:
    text = sms_message_text(_storm(ChannelType.SMS, 50, subject="host-{i} " + "é" * 60))
    assert utf16_units(text) <= MAX_SMS_UNITS
    assert text.startswith("50 alerts:\n- host-0 ")
    shown = text.count("\n- ")
    assert text.endswith(f"\nand {50 - shown} more") and shown < 50


def test_a_single_alert_too_long_for_the_listing_is_cut_visibly() -> None:
    text = fit_listing("2 alerts:", ["- " + "x" * 500, "- y"], 100, sep="\n")
    assert len(text) <= 100 and text.endswith("…\nand 1 more")


def test_an_alert_without_subject_is_listed_by_the_start_of_its_body() -> None:
    text = sms_message_text(_storm(ChannelType.SMS, 2, subject="", body="replica lag {i} " + "z" * 100))
    assert "- replica lag 0 zzz" in text and "…" in text


def test_a_slack_message_lists_each_alerts_subject_body_and_id_escaped() -> None:
    text = slack_message_text(_storm(ChannelType.SLACK, 2, subject="<!channel> db-{i}", body="a & b {i}"))
    assert text == (
        "*2 alerts*\n\n"
        "*&lt;!channel&gt; db-0*\na &amp; b 0\n_id: d-0_\n\n"
        "*&lt;!channel&gt; db-1*\na &amp; b 1\n_id: d-1_"
    )


def test_a_slack_message_over_the_limit_ends_with_and_k_more() -> None:
    text = slack_message_text(_storm(ChannelType.SLACK, 50, body="x" * 2000))
    assert len(text) <= MAX_SLACK_TEXT_CHARS and text.endswith(" more")


@pytest.mark.parametrize(
    "carried_id",
    ["d-1\r\nBcc: victim@example.com", "a,b", "=?utf-8?q?x=0D=0ABcc:_y?="],
    ids=["crlf", "comma", "encoded-word"],
)
def test_carried_ids_never_make_a_header_of_their_own(carried_id: str) -> None:
    """The carried ids header is percent-encoded: serialize's exact-header check passes, no Bcc appears."""
    channel = EmailChannel(
        settings=SmtpSettings("127.0.0.1", 25, "", "", "alerts@example.org", "none"), timeout_seconds=1
    )
    carried = Message(carried_id, ChannelType.EMAIL, "ops@example.com", "s", "b")
    message = Message("d-0", ChannelType.EMAIL, "ops@example.com", "s", "b", carried=(carried,))
    data = serialize(channel.build(message), international=False, carried=True)
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\r\nbcc:" not in head and b"x-alert-carried-ids: " in head
    assert carried_ids_header(message).count(",") == 0
    assert data.count(b"Message-ID:") == 1


@pytest.mark.parametrize(
    ("status", "error", "held"),
    [
        ("pending", "rate_limited: recipient limit", True),
        ("pending", "rate_limited: cooldown, the sms provider asked to slow down (30s left)", True),
        ("pending", "rate_limited: channel limit", False),
        ("pending", "smtp 451", False),
        ("in_progress", "rate_limited: recipient limit", False),
        ("pending", None, False),
    ],
    ids=["recipient-limit", "cooldown", "channel-limit", "retry", "claimed", "fresh"],
)
def test_held_means_pending_after_a_recipient_limit_or_a_cooldown(status: str, error: str | None, held: bool) -> None:
    assert is_held(status, error) is held
