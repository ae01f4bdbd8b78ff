"""Run ``alert-worker`` in process (fast) or as a subprocess (the real thing), with bounded timeouts."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.support.processes import REPO, SCRUBBED_PREFIXES, WorkerProcess, child_env

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


@contextmanager
def worker_process(args: list[str], env: dict[str, str]) -> Iterator[WorkerProcess]:
    """Start ``python -m alert_worker ARGS``; on the way out, kill its whole process group."""
    with tempfile.TemporaryDirectory(prefix="alert-worker-") as tmp:
        worker = WorkerProcess(log_path=Path(tmp) / "worker.log", env=subprocess_env(env))
        worker.launch([sys.executable, "-m", "alert_worker", *args])
        try:
            yield worker
        finally:
            worker.kill()


@contextmanager
def preserved_logging() -> Iterator[None]:
    """In-process CLI calls reconfigure logging; put pytest's back afterwards."""
    import alert_worker.logs as logs

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    rq_level = logging.getLogger("rq").level
    config: dict[str, Any] = structlog.get_config()
    configured = logs._configured
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("rq").setLevel(rq_level)
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
