"""Run ``alert-worker`` in process (fast) or as a subprocess (the real thing), with bounded timeouts."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
import structlog

from tests.support.processes import REPO, SCRUBBED_PREFIXES, child_env

subprocess_env = child_env  # only what the test says plus PATH/HOME: no stray ALERT_* from the developer's shell


def run_cli(args: list[str], env: dict[str, str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m alert_worker ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "alert_worker", *args],
        env=subprocess_env(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class WorkerProcess:
    """A worker subprocess whose output goes to a file (a full pipe would block it)."""

    process: subprocess.Popen[bytes]
    output: IO[bytes]

    def lines(self) -> list[str]:
        return Path(self.output.name).read_text().splitlines()

    def text(self) -> str:
        return Path(self.output.name).read_text()


@contextmanager
def worker_process(args: list[str], env: dict[str, str]) -> Iterator[WorkerProcess]:
    """Start ``python -m alert_worker ARGS``; on the way out, kill its whole process group if still alive."""
    with tempfile.NamedTemporaryFile(prefix="alert-worker-", suffix=".log") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "alert_worker", *args],
            env=subprocess_env(env),
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield WorkerProcess(process=process, output=output)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@contextmanager
def preserved_logging() -> Iterator[None]:
    """In-process CLI calls reconfigure logging; put pytest's back afterwards."""
    import alert_worker.logs as logs

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config: dict[str, Any] = structlog.get_config()
    configured = logs._configured
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**config)
        logging.captureWarnings(False)
        logs._configured = configured


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        return self.out.strip().splitlines()[-1]


class InProcessCli:
    """``alert-worker ARGS`` through ``cli.main`` with a controlled environment and captured output."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str]):
        self._monkeypatch = monkeypatch
        self._capsys = capsys
        self.env = dict(env)

    def __call__(self, *args: str, **extra_env: str) -> CliResult:
        from alert_worker.cli import main

        with self._monkeypatch.context() as patch:
            for name in list(os.environ):
                if name.startswith(SCRUBBED_PREFIXES):
                    patch.delenv(name)
            for name, value in {**self.env, **extra_env}.items():
                patch.setenv(name, value)
            self._capsys.readouterr()
            with preserved_logging():
                try:
                    code = main(list(args))
                except SystemExit as exc:  # argparse usage errors and --help
                    code = int(exc.code or 0)
            captured = self._capsys.readouterr()
        return CliResult(code=code, out=captured.out, err=captured.err)
