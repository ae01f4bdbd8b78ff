"""Shared test plumbing: a scrubbed child environment, free loopback ports, polling with a deadline, a
worker process in its own process group, and ``rq worker`` in burst mode. The one copy of each; crash-only
helpers live under ``tests/crash``."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


# Variables a developer's shell may hold that would change what a child process does.
SCRUBBED_PREFIXES = ("ALERT_", "SMTP_", "SLACK_", "TWILIO_", "DATABASE_URL", "REDIS_URL", "RQ_")


def scrubbed_environ() -> dict[str, str]:
    """``os.environ`` without any of our settings: only what a test says reaches the code under test."""
    return {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)}


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """A subprocess's environment: scrubbed, this worktree on PYTHONPATH, unbuffered, then ``extra``."""
    return {**scrubbed_environ(), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra}


def free_port() -> int:
    """A free loopback TCP port (``port=0`` does not work for every server we start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rq_burst(queues: list[str], env: dict[str, str], *, timeout: float = 120, extra: list[str] | None = None) -> str:
    """``rq worker <queues> --with-scheduler --burst``: the user's own command, in burst mode."""
    cmd = [str(BIN / "rq"), "worker", *queues, "--with-scheduler", "--burst", "--url", env["REDIS_URL"], *(extra or [])]
    done = subprocess.run(
        cmd, env=child_env(env), cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"rq worker exited {done.returncode}:\n{output[-4000:]}"
    return output


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
) -> None:
    """Poll with a deadline; never sleep and hope. ``ignore``: errors that mean "not yet" (a server starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except ignore:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class WorkerProcess:
    """A worker command in its own process group, its output appended to a file (a full pipe would block it).

    ``stop`` is a warm shutdown (SIGTERM to the worker, wait) and then SIGKILL to whatever is left of the
    group, so work-horses and scheduler children never outlive a test. The crash suite's restartable
    worker (``tests/crash/harness.py``) subclasses this one.
    """

    def __init__(self, *, log_path: str | Path, env: dict[str, str], cwd: str | Path = REPO) -> None:
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self, command: list[str]) -> subprocess.Popen[bytes]:
        """Start ``command`` (the environment is used as given: build it with ``child_env``)."""
        with open(self.log_path, "ab") as log:  # the child holds its own descriptor
            self.process = subprocess.Popen(
                command, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self.process

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """Warm shutdown, then SIGKILL for whatever is left in the group."""
        if self.process is None:
            return
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole group (a no-op for a group already gone) and reap the worker."""
        if self.process is None:
            return
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)

    def text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def lines(self) -> list[str]:
        return self.text().splitlines()
