"""The texts of a message that carries held alerts (docs/contract.md §8), per channel, and what "held" means."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from alert_worker.channels.email import EmailChannel, serialize
from alert_worker.channels.slack import (
    MAX_BLOCKS,
    MAX_SECTION_CHARS,
    MAX_SLACK_TEXT_CHARS,
    alert_sections,
    digest_blocks,
)
from alert_worker.channels.slack import carried_fit as slack_carried_fit
from alert_worker.channels.slack import message_text as slack_message_text
from alert_worker.channels.sms import MAX_SMS_UNITS
from alert_worker.channels.sms import message_text as sms_message_text
from alert_worker.digest import carried_ids_header, email_carried_fit, email_digest_body, fit_listing, is_held
from alert_worker.models import ChannelType, Message
from alert_worker.settings import SmtpSettings
from alert_worker.validation import MAX_BODY_BYTES, utf16_units


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


def test_a_slack_message_lists_each_alerts_subject_body_and_id_escaped_without_markup() -> None:
    """The notification text has no ``*``/``_`` markup an alert's own ``*`` or ``_`` could break."""
    text = slack_message_text(_storm(ChannelType.SLACK, 2, subject="<!channel> *db-{i}", body="a & b {i}"))
    assert text == (
        "2 alerts\n\n"
        "&lt;!channel&gt; *db-0\na &amp; b 0\nid: d-0\n\n"
        "&lt;!channel&gt; *db-1\na &amp; b 1\nid: d-1"
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


# -- a message carries only what it shows in full (§8) --------------------------------------------------
def _carried_up_to(message: Message, fit: int) -> Message:
    return replace(message, carried=message.carried[:fit])


def _sections_of(blocks: list[dict[str, Any]], delivery_id: str) -> str:
    """The text of one alert's sections: from its ``id:`` line's section up to the next alert's."""
    texts = [b["text"]["text"] for b in blocks[1:]]
    start = next(i for i, t in enumerate(texts) if f"id: {delivery_id}\n" in t or t.endswith(f"id: {delivery_id}"))
    end = next((i for i in range(start + 1, len(texts)) if "\nid: d-" in texts[i]), len(texts))
    return "".join(texts[start:end])


@pytest.mark.parametrize(
    ("n", "body", "expected_fit"),
    [
        (60, "at 9{i}%", 48),  # header + 49 one-section alerts = 50 blocks
        (10, "x" * 2_000, 9),  # ten alerts of 2,000: 10 sections, 2 x 10 x 2,000 chars < 40,000 of text
        (30, "x" * 3_500, 10),  # two sections each; the text reaches 40,000 first
        (3, "y" * 39_000, 0),  # the carrier alone fills the text: nothing rides along
    ],
    ids=["short-alerts-50-blocks", "fits-all", "long-alerts-text-limit", "carrier-fills-it"],
)
def test_a_slack_digest_carries_only_the_alerts_its_blocks_and_text_show_in_full(
    n: int, body: str, expected_fit: int
) -> None:
    storm = _storm(ChannelType.SLACK, n, body=body)
    fit = slack_carried_fit(storm, storm.carried)
    assert fit == expected_fit
    if not fit:
        return
    message = _carried_up_to(storm, fit)
    blocks = digest_blocks(message)
    assert len(blocks) <= MAX_BLOCKS
    assert all(len(b["text"]["text"]) <= MAX_SECTION_CHARS for b in blocks)
    text = slack_message_text(message)
    assert len(text) <= MAX_SLACK_TEXT_CHARS and not text.endswith(" more")
    for alert in (message, *message.carried):
        shown = _sections_of(blocks, alert.delivery_id)
        assert shown.startswith(f"{alert.subject}\nid: {alert.delivery_id}\n"), "subject, then the id, then the body"
        assert shown.replace("\n", "").endswith(alert.body.replace("\n", "")), "the whole body"
        assert f"\nid: {alert.delivery_id}\n" in text + "\n"  # its own line: d-1 is not d-10
    if fit < len(storm.carried):
        assert (
            len(digest_blocks(_carried_up_to(storm, fit + 1))) > MAX_BLOCKS
            or slack_message_text(_carried_up_to(storm, fit + 1)).endswith(" more")  # cut to fit 40,000
        )


def test_a_long_alert_in_a_slack_digest_spans_several_sections_with_its_id_in_the_first() -> None:
    alert = Message("d-long", ChannelType.SLACK, "u", "<b> & c", "line\n" * 1_500)  # 7,500 characters
    sections = alert_sections(alert)
    assert len(sections) == 3 and all(len(s) <= MAX_SECTION_CHARS for s in sections)
    assert sections[0].startswith("&lt;b&gt; &amp; c\nid: d-long\nline\n")
    assert "".join(sections).count("line") == 1_500


@pytest.mark.parametrize(
    ("sizes", "expected_fit"),
    [
        ((10, 400_000, 400_000, 400_000), 2),
        ((10, 10, 10), 2),
        ((999_900, 10), 0),
        ((10, 999_900), 0),
    ],
    ids=["two-of-three-big", "all-small", "carrier-fills-it", "one-too-big-to-ride"],
)
def test_an_email_digest_carries_only_the_alerts_that_fit_whole_in_one_body(
    sizes: tuple[int, ...], expected_fit: int
) -> None:
    alerts = [
        Message(f"d-{i}", ChannelType.EMAIL, "ops@example.com", f"s{i}", "é" * (s // 2)) for i, s in enumerate(sizes)
    ]
    storm = Message(**{**alerts[0].__dict__, "carried": tuple(alerts[1:])})
    fit = email_carried_fit(storm, storm.carried, MAX_BODY_BYTES)
    assert fit == expected_fit
    if fit:
        body = email_digest_body(_carried_up_to(storm, fit))
        assert len(body.encode()) <= MAX_BODY_BYTES
        assert all(a.body in body and f"Delivery: {a.delivery_id}" in body for a in (storm, *storm.carried[:fit]))
    if fit < len(storm.carried):
        assert len(email_digest_body(_carried_up_to(storm, fit + 1)).encode()) > MAX_BODY_BYTES
