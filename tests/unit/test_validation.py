"""Job-argument checks: which bad inputs raise ``ValueError`` and which are poisoned as invalid input."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alert_worker.errors import InvalidInputError
from alert_worker.models import ChannelType
from alert_worker.validation import (
    MAX_BODY_BYTES,
    TRUNCATION_MARKER,
    clean_body,
    clean_content,
    clean_recipient,
    clean_subject,
    fit_body,
    is_e164,
    normalize_recipient,
    storable_payload,
    truncate,
    utf16_units,
    validate_job_arguments,
)


@pytest.mark.parametrize(
    ("delivery_id", "channel", "attempt"),
    [
        ("", "email", 0),
        ("x" * 256, "email", 0),
        (None, "email", 0),
        (123, "email", 0),
        ("   ", "email", 0),
        ("a\x00b", "email", 0),
        ("a\ud800", "email", 0),
        ("d", "fax", 0),
        ("d", None, 0),
        ("d", "EMAIL ", 0),
        ("d", "email", -1),
        ("d", "email", True),
        ("d", "email", 1.0),
        ("d", "email", "1"),
        ("d", "email", None),
        ("d", "email", 2**31),
        ("d", "email", 2**63),
        ("d", "email", False),
    ],
    ids=[
        "empty-id",
        "id-256",
        "id-none",
        "id-int",
        "id-blank",
        "id-nul",
        "id-surrogate",
        "unknown-channel",
        "channel-none",
        "channel-padded",
        "attempt-negative",
        "attempt-bool",
        "attempt-float",
        "attempt-str",
        "attempt-none",
        "attempt-2**31",
        "attempt-2**63",
        "attempt-false",
    ],
)
def test_bad_id_channel_or_attempt_raise_value_error(delivery_id: Any, channel: Any, attempt: Any) -> None:
    """The three arguments a producer must get right raise before any I/O."""
    with pytest.raises(ValueError):
        validate_job_arguments(delivery_id, channel, attempt)


def test_the_largest_attempt_the_database_can_hold_is_accepted() -> None:
    """``attempts`` is a Postgres integer: 2**31-1 is the last value that fits."""
    assert validate_job_arguments("d", "email", 2**31 - 1)[2] == 2**31 - 1


SWAPPED = "alice.smith@example.com"


@pytest.mark.parametrize(
    ("delivery_id", "channel", "attempt"),
    [
        (SWAPPED * 12, "email", 0),
        ("d", SWAPPED, 0),
        ("d", "email", SWAPPED),
        ("d", "email", [SWAPPED]),
        ("d", SWAPPED.encode(), 0),
    ],
    ids=["id-too-long", "recipient-as-channel", "recipient-as-attempt", "list-as-attempt", "bytes-as-channel"],
)
def test_a_value_error_names_the_type_and_length_never_the_value(delivery_id: Any, channel: Any, attempt: Any) -> None:
    """A producer that swaps arguments must not get the recipient into RQ's log and failed registry."""
    with pytest.raises(ValueError) as caught:
        validate_job_arguments(delivery_id, channel, attempt)
    text = str(caught.value)
    assert "alice" not in text and "example.com" not in text
    assert "got " in text and ("length" in text or "list" in text)


def test_good_arguments_pass_through() -> None:
    """A UUID id, a known channel, attempt 0."""
    assert validate_job_arguments("0b7d2c1e-0000-4000-8000-000000000000", "sms", 0) == (
        "0b7d2c1e-0000-4000-8000-000000000000",
        ChannelType.SMS,
        0,
    )


@pytest.mark.parametrize(
    ("subject", "body", "reason"),
    [
        ("", "", "neither subject nor body"),
        (None, "   \n ", "neither subject nor body"),
        (5, "b", "subject must be a string, got int"),
        ("s", b"bytes", "body must be a string, got bytes"),
        ("s", ["list"], "body must be a string, got list"),
        ("s\x07", "b", "subject contains control character U+0007"),
        ("s", "b\x00", "body contains control character U+0000"),
        ("s", "b\x1b[31m", "body contains control character U+001B"),
        ("s\ud800", "b", "subject contains lone surrogates"),
        ("s", "b\udfff", "body contains lone surrogates"),
        ("s", "x" * (MAX_BODY_BYTES + 1), "body is larger than"),
    ],
    ids=[
        "both-empty",
        "none-and-blank",
        "subject-int",
        "body-bytes",
        "body-list",
        "subject-bell",
        "body-nul",
        "body-escape",
        "subject-surrogate",
        "body-surrogate",
        "body-over-1mb",
    ],
)
def test_bad_content_is_invalid_input(subject: Any, body: Any, reason: str) -> None:
    """Bad content is poisoned with a specific ``invalid_input`` reason, never raised as ``ValueError``."""
    with pytest.raises(InvalidInputError) as caught:
        clean_content(subject, body)
    assert caught.value.reason.startswith("invalid_input")
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("subject", "body", "cleaned"),
    [
        ("", "body only", ("", "body only")),
        ("Subject only", "", ("Subject only", "")),
        (None, "body", ("", "body")),
        ("s", None, ("s", "")),
    ],
    ids=["empty-subject", "empty-body", "none-subject", "none-body"],
)
def test_an_empty_subject_or_an_empty_body_alone_is_valid(subject: Any, body: Any, cleaned: tuple[str, str]) -> None:
    """One of the two is enough to be an alert; the missing one comes back as empty text."""
    assert clean_content(subject, body) == cleaned


def test_body_keeps_tabs_and_newlines() -> None:
    """Multi-line bodies are normal; only other control characters are refused."""
    assert clean_body("line 1\n\tline 2\r\n") == "line 1\n\tline 2\r\n"


def test_subject_collapses_whitespace_and_is_truncated_to_255_with_marker() -> None:
    """CR/LF and runs of whitespace become one space; over 255 characters ends in ``…``."""
    assert clean_subject(" a \r\n\t b ") == "a b"
    long = clean_subject("s" * 400)
    assert len(long) == 255 and long.endswith(TRUNCATION_MARKER)


@pytest.mark.parametrize(
    ("recipient", "reason"),
    [
        (7, "must be a string"),
        ("x" * 2049, "longer than 2048"),
        ("a b@example.com", "whitespace"),
        ("a\x00@example.com", "control character"),
        ("a\ud800@example.com", "lone surrogates"),
    ],
    ids=["int", "oversize", "inner-space", "nul", "surrogate"],
)
def test_bad_recipient_is_invalid_input(recipient: Any, reason: str) -> None:
    """Oversize, non-string, whitespace, control characters and surrogates are refused for every channel."""
    with pytest.raises(InvalidInputError, match=reason):
        clean_recipient(recipient)


def test_recipient_none_is_empty_and_outer_whitespace_is_stripped() -> None:
    """Empty is decided per channel (Slack: the default webhook), not here."""
    assert clean_recipient(None) == ""
    assert clean_recipient("  ops@example.com \n") == "ops@example.com"


@pytest.mark.parametrize(
    ("recipient", "subject", "body"),
    [(1, "s", "b"), ("r", "s\ud800", "b"), ("r", "s", "\x00"), ("r", "s", "x" * (MAX_BODY_BYTES + 1))],
    ids=["non-string", "surrogate", "nul", "oversize"],
)
def test_unstorable_arguments_give_no_payload(recipient: Any, subject: Any, body: Any) -> None:
    """What Postgres cannot store (or must not) is not stored; the executor poisons the row instead."""
    assert storable_payload(recipient, subject, body) is None


def test_truncate_marks_the_cut() -> None:
    """Exactly ``limit`` characters, the last one the marker; short text unchanged."""
    assert truncate("abcdef", 4) == "abc" + TRUNCATION_MARKER
    assert truncate("abc", 4) == "abc"


# A head of 30 astral characters costs 60 UTF-16 units: the limit always leaves room for the head.
@given(head=st.text(max_size=30), body=st.text(max_size=300), limit=st.integers(min_value=61, max_value=200))
def test_fit_body_always_fits_and_marks_a_cut(head: str, body: str, limit: int) -> None:
    """``head + fit_body(...)`` never exceeds the limit in the provider's units; a cut ends in the marker."""
    fitted = fit_body(head, body, limit, cost=utf16_units)
    assert utf16_units(head + fitted) <= limit
    if fitted != body:
        assert fitted.endswith(TRUNCATION_MARKER) and body.startswith(fitted[:-1])


def test_utf16_units_counts_astral_characters_twice() -> None:
    """Emoji outside the BMP are two UTF-16 code units, as Twilio counts them."""
    assert utf16_units("a😀é") == 4


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("+4915112345678", True),
        ("+12025550123", True),
        ("+0123456789", False),
        ("+1234567", False),
        ("+1234567890123456", False),
        ("4915112345678", False),
    ],
    ids=["de-mobile", "us", "leading-zero", "7-digits", "16-digits", "no-plus"],
)
def test_one_e164_pattern_for_settings_and_the_sms_channel(number: str, valid: bool) -> None:
    """``TWILIO_FROM_NUMBER`` and an SMS recipient are judged by the same rule (``+0…`` is not E.164)."""
    from alert_worker.channels.sms import check_e164
    from alert_worker.settings import Settings

    assert is_e164(number) is valid
    env = {"DATABASE_URL": "postgresql://x", "REDIS_URL": "redis://x", "TWILIO_FROM_NUMBER": number}
    if valid:
        assert check_e164(number) == number and Settings.from_env(env).twilio.from_number == number
    else:
        with pytest.raises(InvalidInputError):
            check_e164(number)
        with pytest.raises(ValueError, match="TWILIO_FROM_NUMBER"):
            Settings.from_env(env)


HOOK = "https://hooks.slack.com/services/T000/B000/XXXXsecret"
SLACK_VARIANTS = [
    HOOK,
    HOOK + "?",
    HOOK + "#x",
    HOOK.replace("https://hooks.slack.com", "HTTPS://Hooks.SLACK.com"),
    "",
    "default",
    " default",
    f"  {HOOK}\t",
    HOOK + "?a=1",
]


@pytest.mark.parametrize(
    "variant",
    SLACK_VARIANTS,
    ids=[
        "url",
        "empty-query",
        "fragment",
        "upper-scheme-host",
        "empty",
        "default",
        "padded-default",
        "padded-url",
        "with-query",
    ],
)
def test_slack_variants_of_one_webhook_normalize_to_one_identity(variant: str) -> None:
    """``""``/``default`` resolve to SLACK_WEBHOOK_URL; scheme and host lower-cased; query and fragment dropped."""
    assert normalize_recipient(ChannelType.SLACK, variant, default_webhook_url=HOOK) == HOOK


def test_slack_normalization_keeps_the_path_case() -> None:
    """The webhook path is a case-sensitive secret: only scheme and host are folded."""
    assert normalize_recipient(ChannelType.SLACK, "HTTPS://HOOKS.slack.com/services/AbC") == (
        "https://hooks.slack.com/services/AbC"
    )


@pytest.mark.parametrize(
    ("channel", "raw", "normalized"),
    [
        (ChannelType.EMAIL, " Ops@Example.COM ", "ops@example.com"),
        (ChannelType.SMS, " +4915112345678 ", "+4915112345678"),
        (ChannelType.SLACK, "https://[::1", "https://[::1"),
        (ChannelType.SLACK, "default", "default"),
    ],
    ids=["email-case-and-space", "sms-trimmed", "malformed-url-total", "default-without-setting"],
)
def test_email_and_sms_identities_and_odd_input(channel: ChannelType, raw: str, normalized: str) -> None:
    """Total on any text; e-mail by lower-cased address, SMS by its E.164 string."""
    assert normalize_recipient(channel, raw) == normalized


@pytest.mark.parametrize(
    "recipient", ["Ops Team <ops@example.com>", "<ops@example.com>", '"Ops" <ops@example.com>'], ids=str
)
def test_a_display_name_is_refused_as_such_not_as_whitespace(recipient: str) -> None:
    from alert_worker.errors import InvalidInputError
    from alert_worker.validation import clean_recipient

    with pytest.raises(InvalidInputError, match="display names are not accepted"):
        clean_recipient(recipient)
