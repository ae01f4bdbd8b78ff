"""A slow Twilio answer never doubles an SMS (docs/contract.md §7.1): real worker processes, a loopback Twilio
that accepts the message and then answers slower than the job timeout, each piece inside the send timeout.

The send has one deadline below the job timeout: a trickled body and headers trickled line by line are cut
off there (the connection's socket is shut down at the deadline), in the threaded worker and in RQ's forking
worker alike, and recorded as an unknown outcome. The retry asks Twilio first, finds the message, and sends
nothing.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from alert_worker.producer import send_alert
from alert_worker.settings import Settings
from tests.support.cli import subprocess_env
from tests.support.fake_twilio import FakeTwilio, running_fake_twilio
from tests.support.http_providers import channel_env
from tests.support.processes import WorkerProcess, wait_until

PHONE = "+15551234567"


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with running_fake_twilio() as fake:
        yield fake


def _status(database_url: str, delivery_id: str) -> tuple[str, str | None]:
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT status, provider_message_id FROM alert_deliveries WHERE id = %s", (delivery_id,)
        ).fetchone()
    return (found[0], found[1]) if found else ("missing", None)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("answer", "worker_args", "cut_by"),
    [
        ("trickle_body:1.5", ["--threads", "2"], "the send deadline"),
        ("trickle_headers:1.5", ["--threads", "2"], "the send deadline"),
        ("trickle_headers:1.5", ["--worker-class", "rq.worker.Worker"], "the send deadline"),
    ],
    ids=["threaded-body-past-the-job-timeout", "threaded-headers-past-the-job-timeout",
         "forking-headers-past-the-job-timeout"],
)
def test_an_answer_slower_than_the_job_timeout_sends_one_sms(
    worker_env: dict[str, str], database_url: str, twilio: FakeTwilio, answer: str, worker_args: list[str],
    cut_by: str,
) -> None:  # fmt: skip
    env = {
        **worker_env,
        **channel_env(slack_default="", twilio_token="t" * 32),
        # the answer (eight header lines 1.5 s apart, or the body a byte per 1.5 s) outlasts the job timeout;
        # the send deadline must cut it first however long a loaded machine takes to reach the send
        "ALERT_JOB_TIMEOUT_SECONDS": "8",
        "ALERT_SEND_TIMEOUT_SECONDS": "4",
        "ALERT_RETRY_DELAYS": "1",
        "ALERT_RATE_SMS_PER_RECIPIENT_HOUR": "0",
        "ALERT_RATE_SMS_PER_MIN": "0",
    }
    twilio.script.append(answer)
    send_alert("sms", PHONE, "CRITICAL", "db-1 down", delivery_id="slow-1", settings=Settings.from_env(env))
    with tempfile.TemporaryDirectory(prefix="alert-worker-") as tmp:
        worker = WorkerProcess(log_path=Path(tmp) / "worker.log", env=subprocess_env(env))
        worker.launch([sys.executable, "-m", "tests.support.fake_twilio", twilio.base_url, "run", *worker_args])
        try:
            wait_until(lambda: _status(database_url, "slow-1")[0] == "delivered", timeout=120,
                       what=f"the SMS delivered after {cut_by} cut its first answer off")  # fmt: skip
            log = worker.text()
        finally:
            worker.kill()
    assert [m["sid"] for m in twilio.accepted] == [_status(database_url, "slow-1")[1]], "one SMS, recorded"
    assert twilio.posts == 1, f"not resent\n{log[-3000:]}"
    assert '"delivery_found_already_sent"' in log
    assert '"delivery_send_interrupted"' not in log, "the deadline, not the job timeout, ended the send"


@pytest.mark.timeout(240)
def test_a_worker_killed_while_twilio_answers_leaves_an_sms_the_next_worker_looks_up_and_never_resends(
    worker_env: dict[str, str], database_url: str, twilio: FakeTwilio
) -> None:
    """kill -9 (OOM killer, node loss) after Twilio created the message, before its answer came. The next
    worker's sweep reclaims the row (``worker_lost``) and records the lost attempt as an unknown outcome
    (§7.1 "or by anything else"); its job looks Twilio up, finds the message and posts nothing."""
    env = {
        **worker_env,
        **channel_env(slack_default="", twilio_token="t" * 32),
        "ALERT_JOB_TIMEOUT_SECONDS": "6",
        "ALERT_SEND_TIMEOUT_SECONDS": "5",
        "ALERT_SWEEP_INTERVAL_SECONDS": "1",
        "ALERT_RATE_SMS_PER_RECIPIENT_HOUR": "0",
        "ALERT_RATE_SMS_PER_MIN": "0",
    }
    twilio.script.append("trickle_headers:3")  # accepted at once, the answer's first line only after 3 s
    send_alert("sms", PHONE, "CRITICAL", "db-3 down", delivery_id="killed-1", settings=Settings.from_env(env))
    command = [sys.executable, "-m", "tests.support.fake_twilio", twilio.base_url, "run", "--threads", "2"]
    with tempfile.TemporaryDirectory(prefix="alert-worker-") as tmp:
        first = WorkerProcess(log_path=Path(tmp) / "first.log", env=subprocess_env(env))
        second = WorkerProcess(log_path=Path(tmp) / "second.log", env=subprocess_env(env))
        first.launch(command)
        try:
            wait_until(lambda: len(twilio.accepted) == 1, timeout=120, what="Twilio accepted the first POST")
            first.kill()  # SIGKILL to the whole group while the answer is still on its way
            second.launch(command)
            wait_until(lambda: _status(database_url, "killed-1")[0] == "delivered", timeout=120,
                       what="the SMS delivered by the second worker")  # fmt: skip
            log = second.text()
        finally:
            first.kill()
            second.kill()
    assert _status(database_url, "killed-1")[1] == twilio.accepted[0]["sid"]
    assert twilio.posts == 1 and len(twilio.accepted) == 1, f"not resent\n{log[-3000:]}"
    assert '"delivery_found_already_sent"' in log and '"provider_lookup"' in log
