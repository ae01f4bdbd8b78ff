"""RQ's own tools show our jobs with neutral descriptions: nothing an alert says reaches `rq info`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis
from rq import Queue

from tests.support.cli import run_cli, subprocess_env

pytestmark = pytest.mark.integration

RECIPIENT = "canary-recipient-7731@example.com"
SUBJECT = "canary-subject-9043"
BODY = "canary-body-5512 db-1 disk at 99%"
RQ = str(Path(sys.executable).with_name("rq"))


@pytest.mark.parametrize(
    "options",
    [[], ["--by-queue"], ["--raw"], ["alerts"]],
    ids=["default", "by-queue", "raw", "one-queue"],
)
def test_rq_info_never_prints_the_recipient_subject_or_body_of_a_sent_alert(
    worker_env: dict[str, str], redis_url: str, redis_client: redis.Redis, options: list[str]
) -> None:
    """`alert-worker send` (real Postgres and Redis), then the venv's `rq info`: no alert text in its output."""
    sent = run_cli(["send", "--channel", "email", "--to", RECIPIENT, "--subject", SUBJECT, "--body", BODY], worker_env)
    assert sent.returncode == 0, sent.stderr
    delivery_id = sent.stdout.strip().splitlines()[-1]
    [job] = Queue("alerts", connection=redis_client).get_jobs()
    assert job.description == f"alert delivery {delivery_id}", "what rq-dashboard shows"

    info = subprocess.run(
        [RQ, "info", "--url", redis_url, *options],
        env=subprocess_env({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert info.returncode == 0, info.stderr
    assert "alerts" in info.stdout, "rq info saw the queue (the check is not vacuous)"
    printed = info.stdout + info.stderr
    for secret in (RECIPIENT, "canary-recipient", SUBJECT, "canary-body"):
        assert secret not in printed
