"""Masking connection URLs and errors for operators (moved here from settings and worker)."""

from __future__ import annotations

import pytest

from alert_worker.redaction import redact_url, safe_error, url_password, url_target


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/alerts", "postgresql://app:***@db:5432/alerts"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("", ""),
        ("redis://[::1", "<malformed url>"),
    ],
    ids=["password", "no-password", "empty", "malformed"],
)
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    """Scheme, user, host, port and path stay readable; a URL that does not parse is not echoed."""
    assert redact_url(url) == shown


def test_url_target_names_host_port_and_path_never_credentials() -> None:
    """What a start-up log line says about where it tried to connect."""
    assert url_target("postgresql://app:s3cret@db:5432/alerts") == "db:5432/alerts"
    assert url_target("foo") == "?" and url_target("redis://[::1") == "?"


def test_safe_error_is_one_bounded_line_with_the_password_masked() -> None:
    """The DSN's password never reaches an operator, even when the driver echoes the DSN."""
    password = url_password("postgresql://app:s3cret@db/alerts")
    error = OSError("connection to postgresql://app:s3cret@db failed\nsecond line " + "x" * 500)
    text = safe_error(error, password)
    assert text.startswith("OSError: connection to postgresql://app:***@db failed")
    assert "s3cret" not in text and "second line" not in text and len(text) < 230
