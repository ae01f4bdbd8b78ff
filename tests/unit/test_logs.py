"""Log lines: JSON with event/level/timestamp, RQ's own lines included, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest
import structlog

from alert_worker.logs import configure_logging
from tests.support.cli import preserved_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    with preserved_logging():
        configure_logging("json", stream=out, rq_level=logging.INFO)  # RQ's INFO lines shown, to check their shape
        yield out


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_structlog_event_is_one_json_line_with_level_iso_timestamp_and_logger(stream: io.StringIO) -> None:
    """The fields every consumer relies on."""
    structlog.get_logger("alert_worker.test").info("delivery_claimed", delivery_id="d-1", attempt=1)
    [line] = _lines(stream)
    assert line["event"] == "delivery_claimed" and line["delivery_id"] == "d-1"
    assert line["level"] == "info" and line["logger"] == "alert_worker.test"
    assert str(line["timestamp"]).endswith("Z") and "T" in str(line["timestamp"])


@pytest.mark.parametrize(
    ("message", "args", "job_id", "delivery_id"),
    [
        ("Worker %s: %s: %s", ("w1", "alerts", "alert-d-1-send"), "alert-d-1-send", "d-1"),
        (
            "Worker %s: %s: %s (%s)",
            ("w1", "alerts", "Job OK", "alert-x-send-y-send"),
            "alert-x-send-y-send",
            "x-send-y",
        ),
        ("job %s", ("alert-d2-sweep-1732800000000",), "alert-d2-sweep-1732800000000", "d2"),
        ("job %s", ("alert-d3-retry-0b0e8f6c-6f1e-4c55-9a34-3f1a1d6e2b11",), None, "d3"),
        ("job %s", ("alert-h" + "a" * 32 + "-send",), "alert-h" + "a" * 32 + "-send", None),
        ("Worker %s: started", ("w1",), None, None),
    ],
    ids=["dequeued", "id-containing-a-suffix", "sweep-job", "retry-job", "hashed-id", "not-about-a-job"],
)
def test_rq_lines_are_json_and_name_the_delivery_their_job_is_for(
    stream: io.StringIO, message: str, args: tuple[str, ...], job_id: str | None, delivery_id: str | None
) -> None:
    """The delivery id is read back from our job ids; hashed ids (unsafe delivery ids) give only the job id."""
    logging.getLogger("rq.worker").info(message, *args)
    [line] = _lines(stream)
    assert line["logger"] == "rq.worker" and line["level"] == "info"
    if job_id is not None:
        assert line["job_id"] == job_id
    assert line.get("delivery_id") == delivery_id


def test_rq_colour_codes_are_stripped(stream: io.StringIO) -> None:
    """RQ colours queue names when stdout is a terminal; the JSON event stays plain."""
    logging.getLogger("rq.worker").info("*** Listening on %s...", "\x1b[32malerts\x1b[39;49;00m")
    assert _lines(stream)[0]["event"] == "*** Listening on alerts..."


def test_rq_setup_adds_no_plain_text_handler(stream: io.StringIO) -> None:
    """``setup_loghandlers`` sees our root handler and leaves the rq loggers alone."""
    from rq.logutils import setup_loghandlers

    setup_loghandlers("INFO", name="rq.worker")
    assert logging.getLogger("rq.worker").handlers == []
    logging.getLogger("rq.worker").info("hello")
    assert _lines(stream)[0]["event"] == "hello"


def test_secret_bearing_keys_are_redacted(stream: io.StringIO) -> None:
    """A recipient, body or token passed by mistake never reaches the output."""
    structlog.get_logger().warning("oops", recipient="ops@example.com", body="hi", token="t0k")
    line = _lines(stream)[0]
    assert line["recipient"] == line["body"] == line["token"] == "[redacted]"


def test_python_warnings_become_json_lines(stream: io.StringIO) -> None:
    """A library warning is a log line, not free text on stderr."""
    warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    [line] = _lines(stream)
    assert "deprecated thing" in str(line["event"]) and line["level"] == "warning"


def test_console_format_is_for_humans() -> None:
    """``ALERT_LOG_FORMAT=console``: readable key=value text, not JSON."""
    out = io.StringIO()
    with preserved_logging():
        configure_logging("console", stream=out)
        structlog.get_logger().info("worker_started", queues=["alerts"])
    text = out.getvalue()
    assert "worker_started" in text and "queues=['alerts']" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_console_format_prints_control_characters_escaped() -> None:
    """A delivery id holding terminal escapes reaches a terminal as ``\\x1b[...`` (JSON escapes them anyway)."""
    out = io.StringIO()
    with preserved_logging():
        configure_logging("console", stream=out)
        structlog.get_logger().info("delivery_claimed", delivery_id="x\r\x1b[2Kfake\x07")
    text = out.getvalue()
    assert "delivery_id=x\\x0d\\x1b[2Kfake\\x07" in text
    assert not any(ch in text for ch in "\r\x1b\x07")


@pytest.mark.parametrize(
    ("rq_level", "shown"),
    [(None, ["Worker w1: suspended"]), ("INFO", ["Worker w1: alerts: Job OK", "Worker w1: suspended"])],
    ids=["default-warning", "asked-for-info"],
)
def test_rq_per_job_info_lines_are_quiet_unless_asked(rq_level: str | None, shown: list[str]) -> None:
    """RQ logs two INFO lines per job ("Job OK"): by default only its warnings reach the output."""
    out = io.StringIO()
    with preserved_logging():
        configure_logging("json", stream=out, **({"rq_level": rq_level} if rq_level else {}))
        logging.getLogger("rq.worker").info("Worker %s: %s: %s", "w1", "alerts", "Job OK")
        logging.getLogger("rq.worker").warning("Worker %s: suspended", "w1")
    assert [line["event"] for line in _lines(out)] == shown


def test_the_log_level_setting_quiets_info_events() -> None:
    """``ALERT_LOG_LEVEL=WARNING``: this package's INFO events are dropped, warnings kept."""
    out = io.StringIO()
    with preserved_logging():
        configure_logging("json", "WARNING", stream=out)
        structlog.get_logger("alert_worker.test").info("delivery_claimed")
        structlog.get_logger("alert_worker.test").warning("cooldown_unreadable")
    assert [line["event"] for line in _lines(out)] == ["cooldown_unreadable"]


def test_a_pool_warning_with_libpq_lines_is_one_json_line_of_one_line_text(stream: io.StringIO) -> None:
    """psycopg_pool logs libpq's multi-line errors; each warning is one JSON line whose event has no newline."""
    logging.getLogger("psycopg.pool").warning(
        "error connecting in %r: %s", "pool-1", 'connection failed: FATAL:  database "x" does not exist\nHINT:  x'
    )
    [line] = _lines(stream)
    assert "\n" not in str(line["event"]) and str(line["event"]).endswith("does not exist HINT:  x")
