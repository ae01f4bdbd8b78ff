"""Inputs and outputs an operator can trust (docs/contract.md §7.6), as pure tables.

Numeric settings are finite; a DSN password is masked whole whatever characters it holds, or refused when
its driver would misread it; text from a delivery prints with its control characters escaped; an
argument that is not UTF-8 is named, never echoed.
"""

from __future__ import annotations

import json

import pytest

from alert_worker.cli import undecodable_argument_name
from alert_worker.console import show
from alert_worker.errors import ConfigurationError
from alert_worker.redaction import escape_controls, redact_url, safe_error, url_password, url_target
from alert_worker.settings import Settings

BASE = {"DATABASE_URL": "postgresql://alert@db:5432/alerts", "REDIS_URL": "redis://r:6379/0"}


# -- numeric settings are finite -----------------------------------------------------------------------
NUMERIC = [
    "ALERT_SEND_TIMEOUT_SECONDS",
    "ALERT_MAX_RETRY_DELAY",
    "ALERT_MAX_DEFER_SECONDS",
    "ALERT_COOLDOWN_SECONDS",
    "ALERT_SWEEP_INTERVAL_SECONDS",
    "ALERT_RETRY_DELAYS",
]


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity", "nan", "NaN", "1e400", "1e300"])
@pytest.mark.parametrize("name", NUMERIC)
def test_a_numeric_setting_that_is_not_a_finite_number_of_seconds_is_refused_by_name(name: str, value: str) -> None:
    """``inf`` would pass a minimum check and fail at the first retry; 1e300 seconds is no better."""
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env({**BASE, name: value})


@pytest.mark.parametrize("delays", ["5,inf", "nan,5", "5, 30 ,1e309"], ids=["inf-last", "nan-first", "overflow-to-inf"])
def test_one_non_finite_retry_delay_refuses_the_list(delays: str) -> None:
    with pytest.raises(ConfigurationError, match="ALERT_RETRY_DELAYS must list positive, finite seconds"):
        Settings.from_env({**BASE, "ALERT_RETRY_DELAYS": delays})


@pytest.mark.parametrize(
    ("name", "value"),
    [("ALERT_WORKER_THREADS", "²"), ("REDIS_SENTINELS", "s:²")],
    ids=["threads-superscript", "sentinel-port-superscript"],
)
def test_a_digit_python_cannot_read_as_a_number_is_a_named_error_not_a_traceback(name: str, value: str) -> None:
    """``"²".isdigit()`` is true and ``int("²")`` raises: the check uses ``isdecimal``."""
    env = {**BASE, name: value, "REDIS_SENTINEL_MASTER": "m"}
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env(env)


def test_large_finite_settings_below_the_bound_still_load() -> None:
    s = Settings.from_env({**BASE, "ALERT_MAX_DEFER_SECONDS": "86400", "ALERT_RETRY_DELAYS": "1,3600,86400"})
    assert (s.max_defer_seconds, s.retry_delays) == (86400.0, (1.0, 3600.0, 86400.0))


# -- passwords in connection URLs ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "password", "shown", "target"),
    [
        ("postgresql://app:s3cret@db:5432/a", "s3cret", "postgresql://app:***@db:5432/a", "db:5432/a"),
        ("redis://:s3cr#etpass@h:6379/0", "s3cr#etpass", "redis://***@h:6379/0", "h:6379/0"),
        ("redis://user:Abc/def@h:6379/0", "Abc/def", "redis://***@h:6379/0", "h:6379/0"),
        ("redis://:Pw?x=1@h:6379/0", "Pw?x=1", "redis://***@h:6379/0", "h:6379/0"),
        ("postgresql://u:pa@ss@h/db", "pa@ss", "postgresql://***@h/db", "h:/db"),
        ("postgresql://u:pa?ss@h/db", "pa?ss", "postgresql://***@h/db", "h:/db"),
        ("postgresql://u:p@h/db?options=a@b", "p@h/db?options=a", "postgresql://***@b", "b:"),
        (
            "postgresql://h/db?sslmode=require&password=q1",
            "q1",
            "postgresql://h/db?sslmode=require&password=***",
            "h:/db",
        ),
        ("host=h password='a b' dbname=x", "a b", "host=h password=*** dbname=x", "?"),
        ("postgresql://u@h/db", "", "postgresql://u@h/db", "h:/db"),
        ("redis://h:6379/0", "", "redis://h:6379/0", "h:6379/0"),
        ("redis://[::1", "", "<malformed url>", "?"),
        ("", "", "", "?"),
    ],
    ids=[
        "plain",
        "hash",
        "slash",
        "question-mark",
        "at-sign",
        "question-mark-postgres",
        "at-in-query-masks-too-much-not-too-little",
        "query-parameter",
        "libpq-keywords",
        "user-only",
        "no-credentials",
        "malformed",
        "empty",
    ],
)
def test_the_password_is_read_up_to_the_last_at_and_never_shown(
    url: str, password: str, shown: str, target: str
) -> None:
    """Userinfo = everything up to the LAST '@'; when user and password cannot be told apart, all of it goes."""
    assert url_password(url) == password
    assert redact_url(url) == shown
    assert url_target(url) == target
    for piece in (password, *password.replace("#", "/").replace("?", "/").replace("@", "/").split("/")):
        if len(piece) >= 3:
            assert piece not in redact_url(url) and piece not in url_target(url)


@pytest.mark.parametrize(
    "message",
    [
        "Port could not be cast to integer value as 's3cr'",
        "failed to resolve host 'etpass@127.0.0.1'",
        "connection to redis://:s3cr#etpass@127.0.0.1 refused",
    ],
    ids=["start-as-a-port", "end-as-a-host", "whole"],
)
def test_safe_error_masks_the_pieces_a_driver_quotes_of_a_password_it_misread(message: str) -> None:
    text = safe_error(ValueError(message), url_password("redis://:s3cr#etpass@127.0.0.1:6379/0"))
    assert "s3cr" not in text and "etpass" not in text


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("REDIS_URL", "redis://:s3cr#etpass@127.0.0.1:6379/0"),
        ("REDIS_URL", "redis://user:Abc/def@127.0.0.1:6379/0"),
        ("REDIS_URL", "redis://:Pw?x=1@127.0.0.1:6379/0"),
        ("DATABASE_URL", "postgresql://u:pa/ss@127.0.0.1/db"),
        ("DATABASE_URL", "postgresql://u:pa@ss@127.0.0.1/db"),
    ],
    ids=["redis-hash", "redis-slash", "redis-question-mark", "postgres-slash", "postgres-at"],
)
def test_a_password_its_driver_would_misread_is_refused_naming_the_variable_not_the_value(name: str, url: str) -> None:
    """redis-py (urllib) ends the authority at '/', '?' or '#'; libpq at '/' and its userinfo at the first '@'."""
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env({**BASE, name: url})
    assert str(refused.value) == (  # a fixed text: nothing of the value
        f"{name}: its password holds an unescaped '/', '?', '#' or '@' (or an '@' follows the host): "
        "percent-encode them (%2F, %3F, %23, %40)"
    )


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("REDIS_URL", "redis://:pa@ss@127.0.0.1:6379/0"),
        ("REDIS_URL", "redis://:pa%23ss@127.0.0.1:6379/0"),
        ("DATABASE_URL", "postgresql://u:pa?ss@127.0.0.1/db"),
        ("DATABASE_URL", "postgresql://u:pa#ss@127.0.0.1/db"),
        ("DATABASE_URL", "postgresql://u:pa%2Fss@127.0.0.1/db?application_name=x"),
        ("DATABASE_URL", "postgresql:///db?host=/run/postgresql"),
    ],
    ids=["redis-at", "redis-escaped", "postgres-question-mark", "postgres-hash", "postgres-escaped", "postgres-socket"],
)
def test_a_password_its_driver_reads_as_written_is_accepted(name: str, url: str) -> None:
    assert getattr(Settings.from_env({**BASE, name: url}), name.lower()) == url


# -- control characters in what the commands print ---------------------------------------------------
@pytest.mark.parametrize(
    ("text", "printed"),
    [
        ("x\x1b[2Kfake", "x\\x1b[2Kfake"),
        ("a\rb\nc\td", "a\\x0db\\x0ac\\x09d"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("del\x7f c1\x9b", "del\\x7f c1\\x9b"),
        ("rtl\u202etxt", "rtl\\u202etxt"),
        ("line\u2028sep", "line\\u2028sep"),
        ("lone\udcff", "lone\\udcff"),
        ("plain-id-42 é 😀 back\\slash", "plain-id-42 é 😀 back\\slash"),
    ],
    ids=["csi", "cr-lf-tab", "osc-title", "del-and-c1", "bidi-override", "line-separator", "surrogate", "untouched"],
)
def test_control_characters_print_as_their_escapes(text: str, printed: str) -> None:
    assert escape_controls(text) == printed
    assert show(text) == printed


def test_show_keeps_none_as_a_dash_and_times_as_iso() -> None:
    from datetime import UTC, datetime

    assert show(None) == "-"
    assert show(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05+00:00"


def test_json_output_has_no_raw_control_character_and_reads_back_the_same() -> None:
    """The commands' ``--json`` is ``json.dumps`` with ASCII only: controls, DEL and C1 come out as escapes."""
    value = {"id": "x\x1b[31m\x7f\x9b\u202e\r\n"}
    text = json.dumps(value)
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in text)
    assert json.loads(text) == value


# -- an argument that is not UTF-8 -----------------------------------------------------------------------
BODY = b"on-call: db password hunter2 \xff".decode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["send", "--channel", "sms", "--to", "+15551234567", "--body", BODY], "--body"),
        (["send", "--channel", "sms", "--to", BODY], "--to"),
        (["send", f"--subject={BODY}", "--channel", "sms", "--to", "x"], "--subject"),
        (["send", "--dedup-key", BODY, "--channel", "sms", "--to", "x"], "--dedup-key"),
        (["send", "--channel", BODY, "--to", "x"], "--channel"),
        (["status", "--json", BODY], "ID"),
        (["poison", "replay", "a", BODY], "IDS"),
        (["poison", "list", "--since", BODY], "--since"),
        ([BODY], "argument 1"),
        (["status", "--" + BODY], "argument 2"),
    ],
    ids=[
        "body",
        "to",
        "option-equals",
        "dashed-option",
        "choice",
        "positional-after-a-flag",
        "second-positional",
        "typed-option",
        "command",
        "option-name-itself",
    ],
)
def test_an_undecodable_argument_is_named_by_its_option(argv: list[str], named: str) -> None:
    index = next(i for i, a in enumerate(argv) if BODY in a)
    assert undecodable_argument_name(argv, index) == named


def test_the_cli_names_the_argument_and_never_echoes_it(capsys: pytest.CaptureFixture[str]) -> None:
    from alert_worker.cli import main

    assert main(["send", "--channel", "sms", "--to", "+15551234567", "--body", BODY]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "alert-worker: error: --body: not valid UTF-8 (value not shown)\n"
