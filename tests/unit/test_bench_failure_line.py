"""The bench says why a job did not finish: the exception's last line and the row's error, never recipient or body."""

from __future__ import annotations

import pytest

from bench.run import BODY, RECIPIENT, failure_line

REFUSED = (
    "Traceback (most recent call last):\n"
    '  File "alert_worker/job.py", line 120, in execute_delivery_job\n'
    "    return run_delivery_job(request, settings=settings)\n"
    f"smtplib.SMTPRecipientsRefused: {{'{RECIPIENT}': (550, b'rejected: {BODY}')}}\n"
)
UNREACHABLE = (
    "Traceback (most recent call last):\n"
    '  File "alert_worker/wiring.py", line 59, in claim\n'
    "alert_worker.wiring.DatabaseUnreachableError: PoolTimeout: couldn't get a connection after 10.00 sec\n\n"
)


@pytest.mark.parametrize(
    ("status", "exc_string", "row", "expected"),
    [
        (
            "failed",
            UNREACHABLE,
            None,
            "b-1: job failed (DatabaseUnreachableError: PoolTimeout: couldn't get a connection after 10.00 sec); "
            "no row",
        ),
        (
            "failed",
            REFUSED,
            ("failed", 1, f"550 5.1.1 <{RECIPIENT}> rejected: {BODY}"),
            "b-1: job failed (SMTPRecipientsRefused: {'<recipient>': (550, b'rejected: <redacted> <redacted> "
            "<redacted> on <redacted>); row failed, attempts 1 (550 5.1.1 <<recipient>> rejected: <redacted> "
            "<redacted> <redacted> on <redacted>)",
        ),
        (
            "failed",
            "Job was stuck in intermediate queue.",
            ("pending", 0, None),
            "b-1: job failed (Job was stuck in intermediate queue.); row pending, attempts 0",
        ),
        ("scheduled", None, ("in_progress", 1, None), "b-1: job scheduled; row in_progress, attempts 1"),
        ("missing", None, None, "b-1: job missing; no row"),
    ],
    ids=[
        "failed-before-its-row",
        "refused-with-recipient-and-body-in-both",
        "failed-by-rq-maintenance",
        "left-scheduled",
        "job-expired",
    ],
)
def test_a_job_that_did_not_finish_is_explained_by_its_last_exception_line_and_its_row(
    status: str, exc_string: str | None, row: tuple[str, int, str | None] | None, expected: str
) -> None:
    line = failure_line("b-1", status, exc_string, row)
    assert line == expected
    assert RECIPIENT not in line
    assert not {"disk", "almost", "full", "db-1"} & set(line.replace("'", " ").split())
