"""``rq worker -c alert_worker.rq_settings``: plain ``rq worker`` with the per-process preload.

rq imports this module in the worker parent before it forks any work-horse, so what it builds is
inherited by every horse (see ``alert_worker.preload``). It reads rq's settings names from the
environment: ``REDIS_URL`` and ``QUEUES`` (from ``RQ_QUEUES``, default ``alerts``).

Job descriptions: rq's settings module cannot set ``log_job_description`` (only the
``--disable-job-desc-logging`` flag can), so this module attaches a filter to the ``rq.worker`` logger
that drops the description from rq's two job lines (a producer's plain ``Queue.enqueue`` puts the
recipient in it). Keep passing ``--disable-job-desc-logging`` as well; the filter is the safety net.
"""

from __future__ import annotations

import logging
import os

from alert_worker.preload import preload_process
from alert_worker.settings import Settings, parse_queues

# rq's two INFO lines that carry job.description (rq 3.0; pinned by tests/unit/test_rq_settings.py).
DEQUEUED_WITH_DESCRIPTION = "Worker %s: %s: %s (%s)"
COMPLETED_WITH_DESCRIPTION = "Successfully completed %s job in %ss on worker %s"


class DropJobDescription(logging.Filter):
    """Rewrites rq's job lines to their description-free form; every other record passes untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg == DEQUEUED_WITH_DESCRIPTION and len(args) == 4:
            record.msg, record.args = "Worker %s: %s: %s", (args[0], args[1], args[3])
        elif record.msg == COMPLETED_WITH_DESCRIPTION and len(args) == 3:
            record.msg, record.args = "Successfully completed a job in %ss on worker %s", (args[1], args[2])
        return True


def _install() -> None:
    logger = logging.getLogger("rq.worker")
    if not any(isinstance(f, DropJobDescription) for f in logger.filters):
        logger.addFilter(DropJobDescription())
    preload_process(Settings.from_env())


if os.environ.get("REDIS_URL"):
    REDIS_URL = os.environ["REDIS_URL"]
QUEUES = list(parse_queues(os.environ.get("RQ_QUEUES", "alerts")))

_install()
