"""Redaction helpers: total on any input, and nothing identifying survives them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alert_worker.models import ChannelType
from alert_worker.redaction import mask_recipient, mask_tail, recipient_hash, sanitize_text

ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=300)


@pytest.mark.parametrize(
    ("channel", "recipient", "masked"),
    [
        ("email", "oncall@example.com", "o***@example.com"),
        ("email", "no-at-sign", "***"),
        ("email", "@example.com", "***"),
        ("sms", "+15551234567", "***4567"),
        ("sms", "+1", "***"),
        ("slack", "https://hooks.slack.com/services/T1/B1/secret", "hooks.slack.com/***"),
        ("slack", "", "default"),
        ("slack", "default", "default"),
        ("slack", "not a url", "***"),
        ("slack", "https://[::1/broken", "***"),
        ("slack", "https://user:pw@evil.example/x", "evil.example/***"),
    ],
    ids=[
        "email",
        "email-no-at",
        "email-no-local",
        "sms",
        "sms-short",
        "slack-url",
        "slack-empty",
        "slack-default",
        "slack-not-url",
        "slack-broken-ipv6",
        "slack-userinfo-dropped",
    ],
)
def test_mask_recipient_shows_only_what_operators_need(channel: str, recipient: str, masked: str) -> None:
    """docs/contract.md §2 forms: first character + domain, last four digits, webhook host."""
    assert mask_recipient(channel, recipient) == masked


@given(channel=st.sampled_from(list(ChannelType)), recipient=ANY_TEXT)
def test_mask_recipient_is_total_and_storable(channel: ChannelType, recipient: str) -> None:
    """Any string (lone surrogates, NUL, broken URLs) masks to short text Postgres can store."""
    masked = mask_recipient(channel, recipient)
    masked.encode("utf-8")  # no lone surrogates
    assert "\x00" not in masked and len(masked) <= 120


def test_mask_tail_keeps_the_last_four() -> None:
    """``***`` plus the last four characters; short values are fully hidden."""
    assert mask_tail("+15551234567") == "***4567"
    assert mask_tail("1234") == "***"


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("550 5.1.1 <bob.smith@example.com>: unknown", "bob.smith@example.com"),
        ("failed for https://hooks.slack.com/services/T1/B1/abcSECRET", "abcSECRET"),
        ("see hooks.slack.com/services/T1/B1/abcSECRET", "abcSECRET"),
        ("The 'To' number +1 (555) 123-4567 is invalid", "123-4567"),
        ("token 0123456789abcdef0123456789abcdef rejected", "0123456789abcdef0123456789abcdef"),
        ("account AC0123456789abcdef0123456789abcdef", "AC0123456789abcdef0123456789abcdef"),
    ],
    ids=["email", "url", "host-path-without-scheme", "phone", "hex-token", "account-sid"],
)
def test_sanitize_text_strips_identifying_strings(text: str, gone: str) -> None:
    """URLs, addresses, phone numbers and token-like strings are replaced by placeholders."""
    assert gone not in sanitize_text(text)


def test_sanitize_text_keeps_codes_and_words() -> None:
    """Status codes and short reason words survive: they are what an operator needs."""
    assert sanitize_text("smtp 451 4.3.0: try again later") == "smtp 451 4.3.0: try again later"


@given(ANY_TEXT)
def test_sanitize_text_is_one_bounded_storable_line(text: str) -> None:
    """Always one line, at most 300 characters, encodable as UTF-8 without NUL."""
    clean = sanitize_text(text)
    clean.encode("utf-8")
    assert "\n" not in clean and "\r" not in clean and "\x00" not in clean and len(clean) <= 300


def test_recipient_hash_is_keyed_and_refuses_an_empty_secret() -> None:
    """HMAC, 16 hex characters; the secret changes it; no unkeyed hash."""
    a = recipient_hash("s1", "sms", "+15551234567")
    assert len(a) == 16 and a != recipient_hash("s2", "sms", "+15551234567")
    with pytest.raises(ValueError, match="empty"):
        recipient_hash("", "sms", "+15551234567")


def test_scrub_echoes_removes_words_the_provider_quoted_from_the_alert() -> None:
    """A reply quoting the subject or body loses those words; codes and short words stay."""
    from alert_worker.redaction import scrub_echoes

    reason = "smtp 554 5.7.1: message 'Payroll-export failed' rejected"
    assert scrub_echoes(reason, "Payroll-export failed", "") == "smtp 554 5.7.1: message <redacted> <redacted> rejected"
    assert scrub_echoes("smtp 451 4.3.0: try later", "", "") == "smtp 451 4.3.0: try later"


def test_an_address_in_angle_brackets_becomes_one_email_placeholder() -> None:
    """An SMTP reply ``<ops@example.com>: user unknown`` reads ``<email>: user unknown``, not ``<<email>>``."""
    from alert_worker.redaction import sanitize_text

    assert sanitize_text("550 5.1.1 <ops@example.com>: user unknown") == "550 5.1.1 <email>: user unknown"
