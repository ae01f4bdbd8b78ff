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
    storable_payload,
    truncate,
    utf16_units,
    validate_job_arguments,
)


@pytest.mark.parametrize(
    ("delivery_id", "channel", "attempt"),
    [
        ("", "email", 0), ("x" * 256, "email", 0), (None, "email", 0), (123, "email", 0), ("   ", "email", 0),
        ("a\x00b", "email", 0), ("a\ud800", "email", 0), ("d", "fax", 0), ("d", None, 0), ("d", "EMAIL ", 0),
        ("d", "email", -1), ("d", "email", True), ("d", "email", 1.0), ("d", "email", "1"), ("d", "email", None),
    ],
    ids=["empty-id", "id-256", "id-none", "id-int", "id-blank", "id-nul", "id-surrogate", "unknown-channel",
         "channel-none", "channel-padded", "attempt-negative", "attempt-bool", "attempt-float", "attempt-str",
         "attempt-none"],
)
def test_bad_id_channel_or_attempt_raise_value_error(delivery_id: Any, channel: Any, attempt: Any) -> None:
    """The three arguments a producer must get right raise before any I/O."""
    with pytest.raises(ValueError):
        validate_job_arguments(delivery_id, channel, attempt)


def test_good_arguments_pass_through() -> None:
    """A UUID id, a known channel, attempt 0."""
    assert validate_job_arguments("0b7d2c1e-0000-4000-8000-000000000000", "sms", 0) == (
        "0b7d2c1e-0000-4000-8000-000000000000", ChannelType.SMS, 0
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
    ids=["both-empty", "none-and-blank", "subject-int", "body-bytes", "body-list", "subject-bell", "body-nul",
         "body-escape", "subject-surrogate", "body-surrogate", "body-over-1mb"],
)
def test_bad_content_is_invalid_input(subject: Any, body: Any, reason: str) -> None:
    """Bad content is poisoned with a specific ``invalid_input`` reason, never raised as ``ValueError``."""
    with pytest.raises(InvalidInputError) as caught:
        clean_content(subject, body)
    assert caught.value.reason.startswith("invalid_input")
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("subject", "body"), [("", "body only"), ("Subject only", ""), (None, "body"), ("s", None)],
    ids=["empty-subject", "empty-body", "none-subject", "none-body"],
)
def test_an_empty_subject_or_an_empty_body_alone_is_valid(subject: Any, body: Any) -> None:
    """One of the two is enough to be an alert."""
    clean_content(subject, body)


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
    [(7, "must be a string"), ("x" * 2049, "longer than 2048"), ("a b@example.com", "whitespace"),
     ("a\x00@example.com", "control character"), ("a\ud800@example.com", "lone surrogates")],
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


@given(head=st.text(max_size=30), body=st.text(max_size=300), limit=st.integers(min_value=32, max_value=200))
def test_fit_body_always_fits_and_marks_a_cut(head: str, body: str, limit: int) -> None:
    """``head + fit_body(...)`` never exceeds the limit in the provider's units; a cut ends in the marker."""
    fitted = fit_body(head, body, limit, cost=utf16_units)
    assert utf16_units(head + fitted) <= limit
    if fitted != body:
        assert fitted.endswith(TRUNCATION_MARKER) and body.startswith(fitted[:-1])


def test_utf16_units_counts_astral_characters_twice() -> None:
    """Emoji outside the BMP are two UTF-16 code units, as Twilio counts them."""
    assert utf16_units("a😀é") == 4
