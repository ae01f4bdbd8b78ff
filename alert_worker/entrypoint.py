"""The names the contract fixes: ``execute_delivery_job`` (the RQ job) and ``main`` (the CLI).

Producers enqueue ``alert_worker.entrypoint.execute_delivery_job`` by import path: its name and
argument order are the wire format (docs/contract.md §1). The job lives in ``alert_worker.job``; ``main`` is a
thin alias of ``alert_worker.cli.main``, imported when called so that the job path never loads the CLI.
"""

from __future__ import annotations

from alert_worker.job import execute_delivery_job, job_request, run_delivery_job
from alert_worker.wiring import build_executor


def main(argv: list[str] | None = None) -> int:
    """``alert-worker``: the same as ``alert_worker.cli.main``."""
    from alert_worker.cli import main as cli_main

    return cli_main(argv)


__all__ = ["build_executor", "execute_delivery_job", "job_request", "main", "run_delivery_job"]
