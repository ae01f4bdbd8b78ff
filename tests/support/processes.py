"""Run real worker processes for end-to-end tests: bounded, with output captured for the failure message."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALERT_", "SMTP_", "SLACK_", "TWILIO_"))}
    env.update(extra)
    env["PYTHONPATH"] = str(REPO)
    return env


def rq_burst(queues: list[str], env: dict[str, str], *, timeout: float = 120, extra: list[str] | None = None) -> str:
    """``rq worker <queues> --with-scheduler --burst``: the user's own command, in burst mode."""
    cmd = [str(BIN / "rq"), "worker", *queues, "--with-scheduler", "--burst", "--url", env["REDIS_URL"], *(extra or [])]
    done = subprocess.run(
        cmd, env=child_env(env), cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"rq worker exited {done.returncode}:\n{output[-4000:]}"
    return output


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll with a deadline; never sleep and hope."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
