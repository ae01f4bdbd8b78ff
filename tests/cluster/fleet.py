"""Worker processes run the way a host's supervisor runs them: restarted when they exit.

RQ's worker leaves its work loop on a Redis connection error met outside its dequeue wait (while it
records a job, or at a heartbeat), so when the Redis primary dies a busy worker exits; systemd's
``Restart=always`` or a Kubernetes pod brings it back, and through Sentinel it finds the new primary.
``SupervisedWorker`` does that with a restart count, so a test can report how often it happened. A
worker may run inside a network namespace (``netns``), as one of the cluster suite's hosts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.cli import subprocess_env
from tests.support.processes import REPO


class SupervisedWorker:
    """``python -m alert_worker ARGS`` (in ``netns`` when given), restarted by ``poll()`` when it exits."""

    def __init__(self, args: list[str], env: dict[str, str], *, netns: str | None = None, name: str = "w") -> None:
        self.args = args
        self.env = env
        self.netns = netns
        self.log = Path(tempfile.mkdtemp(prefix=f"cluster-{name}-")) / "worker.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(
                [*prefix, sys.executable, "-m", "alert_worker", *self.args],
                env=subprocess_env(self.env),
                cwd=REPO,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def poll(self) -> bool:
        """Restart the worker if it has exited (what the host's supervisor does); True when it was."""
        if self.process is not None and self.process.poll() is not None:
            self.restarts += 1
            self.start()
            return True
        return False

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text()[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Kill the worker's whole process group (work-horses and scheduler included)."""
        if self.process is not None:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
            self.process = None

    def close(self) -> None:
        self.stop()
        if self.log.exists():
            self.log.unlink()
        self.log.parent.rmdir()
