"""How deliveries become RQ jobs: the one place (with the worker side) that imports ``rq``.

Every job we enqueue carries a neutral description (never the recipient or body), a bounded
``failure_ttl`` and a ``job_timeout``, and a deterministic id so the same follow-up, sweep or replay
can never be queued twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import redis
from rq import Queue
from rq.exceptions import DuplicateJobError

from alert_worker.executor import FollowUp

JOB_FUNC = "alert_worker.entrypoint.execute_delivery_job"
FAILURE_TTL_SECONDS = 7 * 24 * 3600
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,80}")
_SAFE_SUFFIX = re.compile(r"[^A-Za-z0-9_-]")


def job_id_for(delivery_id: str, suffix: str) -> str:
    """A valid RQ job id (``[A-Za-z0-9_-]+``) derived from the delivery id, readable when it can be."""
    if _SAFE_ID.fullmatch(delivery_id):
        key = delivery_id
    else:
        key = "h" + hashlib.sha256(delivery_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"alert-{key}-{_SAFE_SUFFIX.sub('_', suffix)}"


def schedule_delay(delay_seconds: float, now: float) -> timedelta:
    """The ``enqueue_in`` delta that makes RQ run the job no earlier than ``now + delay_seconds``.

    RQ stores the schedule in whole seconds, truncating, and enqueues a job once its second has
    come: rounding the target up to the next whole second means the job never runs early. The 10 ms
    margin absorbs float and microsecond rounding on the way to that second.
    """
    target = now + max(0.0, delay_seconds)
    return timedelta(seconds=math.ceil(target) - now + 0.01)


class RqEnqueuer:
    """Enqueues ``execute_delivery_job`` now or later, with our job options."""

    def __init__(
        self,
        *,
        connection: redis.Redis,
        job_timeout_seconds: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._connection = connection
        self._job_timeout = job_timeout_seconds
        self._clock = clock

    def _options(self, delivery_id: str, job_id: str) -> dict[str, object]:
        return {
            "job_id": job_id,
            "description": f"alert delivery {delivery_id}",
            "failure_ttl": FAILURE_TTL_SECONDS,
            "job_timeout": self._job_timeout,
            "unique": True,
        }

    def enqueue_now(
        self, *, queue: str, delivery_id: str, channel: str, payload: dict[str, str], attempt: int, suffix: str
    ) -> bool:
        """Enqueue for immediate work; ``False`` when a job with this id already exists."""
        try:
            Queue(queue, connection=self._connection).enqueue(
                JOB_FUNC,
                delivery_id,
                channel,
                payload.get("recipient", ""),
                payload.get("subject", ""),
                payload.get("body", ""),
                attempt=attempt,
                **self._options(delivery_id, job_id_for(delivery_id, suffix)),
            )
        except DuplicateJobError:
            return False
        return True

    def oldest_queued_at(self, queue: str) -> datetime | None:
        """When the job at the head of ``queue`` was enqueued (UTC), or ``None`` for an empty queue."""
        q = Queue(queue, connection=self._connection)
        for job_id in q.get_job_ids(0, 1):
            job = q.fetch_job(job_id)
            if job is not None and job.enqueued_at is not None:
                found = job.enqueued_at
                return found if found.tzinfo else found.replace(tzinfo=UTC)
        return None

    def schedule(self, follow_up: FollowUp) -> None:
        """``enqueue_in`` on the origin queue; one follow-up per claim (id from the claim token)."""
        payload = follow_up.payload
        delta = schedule_delay(follow_up.delay_seconds, self._clock())
        # DuplicateJobError: already scheduled by this very claim, nothing to do.
        with contextlib.suppress(DuplicateJobError):
            Queue(follow_up.queue, connection=self._connection).enqueue_in(
                delta,
                JOB_FUNC,
                follow_up.delivery_id,
                follow_up.channel,
                payload.get("recipient", ""),
                payload.get("subject", ""),
                payload.get("body", ""),
                attempt=follow_up.attempt,
                **self._options(
                    follow_up.delivery_id,
                    job_id_for(follow_up.delivery_id, f"{follow_up.kind}-{follow_up.token}"),
                ),
            )


def scheduler_locks(connection: redis.Redis, queues: Sequence[str]) -> dict[str, bool]:
    """Whether an RQ scheduler holds its lock for each queue (key from RQ's public ``get_locking_key``)."""
    from rq.scheduler import RQScheduler

    pipe = connection.pipeline(transaction=False)
    for queue in queues:
        pipe.exists(RQScheduler.get_locking_key(queue))
    return {queue: bool(held) for queue, held in zip(queues, pipe.execute(), strict=True)}
