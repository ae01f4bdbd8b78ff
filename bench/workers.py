"""A forking RQ worker whose parent imported the job modules, as ``alert-worker run`` does (``-w``)."""

from __future__ import annotations

from rq.worker import Worker

import alert_worker.worker  # noqa: F401 - the same preloads as `alert-worker run` (job module, e-mail, Slack)
import bench.jobs
import bench.reference_async  # noqa: F401


class PreloadedWorker(Worker):
    """``rq.worker.Worker`` with the job modules already in ``sys.modules`` before every fork."""
