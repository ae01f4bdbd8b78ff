"""A forking RQ worker whose parent preloaded, as ``alert-worker run --worker-class rq.worker.Worker`` does."""

from __future__ import annotations

from rq.worker import Worker

import alert_worker.worker  # noqa: F401 - the same preloads as `alert-worker run` (job module, e-mail, Slack)
import bench.jobs
import bench.reference_async  # noqa: F401
from alert_worker.preload import preload_process
from alert_worker.settings import Settings

preload_process(Settings.from_env())  # as `alert-worker run --worker-class rq.worker.Worker` does before forking


class PreloadedWorker(Worker):
    """``rq.worker.Worker`` with the job modules already in ``sys.modules`` before every fork."""
