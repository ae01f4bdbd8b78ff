"""RQ edge 1, enqueueing: how deliveries become RQ jobs. With ``worker`` the only modules importing ``rq``.

Every job we enqueue carries a neutral description (never the recipient or body), a bounded
``failure_ttl`` and a ``job_timeout``, and a deterministic id so the same follow-up, sweep, replay or
database-wait copy can never be queued twice. Also here: the current job's origin and meta, the
scheduler-lock probe, and ``parse_job_id`` for the ids written here. Importing this loads rq (and with it
``rq.worker``): operator commands that do not enqueue must not import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import redis
from rq import Queue, get_current_job
from rq.exceptions import DuplicateJobError, InvalidJobOperation
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job

if TYPE_CHECKING:
    from alert_worker.executor import FollowUp
    from alert_worker.store import RecoveredDelivery

JOB_FUNC = "alert_worker.entrypoint.execute_delivery_job"
FAILURE_TTL_SECONDS = 7 * 24 * 3600
RELEASE_META = "alert_release"  # job meta of `alert-worker release`: past the per-recipient limit once (§8)
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,80}")
_SAFE_SUFFIX = re.compile(r"[^A-Za-z0-9_-]")


# The ids job_id_for writes: alert-<delivery id or h+hash>-<suffix>, suffixes as enqueued by send, sweep,
# replay, the executor's follow-ups (retry/defer + claim token) and the database-wait copies.
_JOB_ID = re.compile(
    r"(?<![A-Za-z0-9_-])alert-(?P<key>[A-Za-z0-9_-]+?)"
    r"-(?P<suffix>send|sweep-\d+|replay-\d+|dbwait-\d+-\d+|release-\d+|(?:retry|defer)-[0-9a-f-]{36})(?![A-Za-z0-9_-])"
)
_HASHED_KEY = re.compile(r"h[0-9a-f]{32}")


@dataclass(frozen=True)
class ParsedJobId:
    job_id: str
    delivery_id: str | None  # None when the delivery id was hashed into the job id


def parse_job_id(text: str) -> ParsedJobId | None:
    """The first job id of ours in ``text`` (an RQ log line), and its delivery id when readable."""
    found = _JOB_ID.search(text)
    if found is None:
        return None
    key = found.group("key")
    return ParsedJobId(job_id=found.group(0), delivery_id=None if _HASHED_KEY.fullmatch(key) else key)


@dataclass(frozen=True)
class CurrentJob:
    """What a running job needs to know about itself: RQ's id, its origin queue, its meta."""

    id: str
    origin: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    worker_name: str | None = None  # the claimant recorded in ``claimed_by`` (dead-worker reclaim)


def current_job() -> CurrentJob | None:
    """The RQ job this code runs in, or ``None`` when called directly (tests, a script)."""
    job = get_current_job()
    if job is None:
        return None
    return CurrentJob(id=job.id, origin=job.origin, meta=dict(job.meta or {}), worker_name=job.worker_name)


def job_args(delivery_id: str, channel: str, payload: Mapping[str, str]) -> tuple[str, str, str, str, str]:
    """The job's positional arguments (the wire format, docs/contract.md §1) from a stored or job payload."""
    return delivery_id, channel, payload.get("recipient", ""), payload.get("subject", ""), payload.get("body", "")


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

    def _options(self, delivery_id: str, job_id: str, meta: Mapping[str, Any] | None = None) -> dict[str, object]:
        options: dict[str, object] = {
            "job_id": job_id,
            "description": f"alert delivery {delivery_id}",
            "failure_ttl": FAILURE_TTL_SECONDS,
            "job_timeout": self._job_timeout,
            "unique": True,
        }
        if meta:
            options["meta"] = dict(meta)
        return options

    def enqueue_now(
        self, *, queue: str, delivery_id: str, channel: str, payload: dict[str, str], attempt: int, suffix: str
    ) -> bool:
        """Enqueue for immediate work; ``False`` when a job with this id already exists."""
        try:
            Queue(queue, connection=self._connection).enqueue(
                JOB_FUNC,
                *job_args(delivery_id, channel, payload),
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
                *job_args(follow_up.delivery_id, follow_up.channel, payload),
                attempt=follow_up.attempt,
                **self._options(
                    follow_up.delivery_id,
                    job_id_for(follow_up.delivery_id, f"{follow_up.kind}-{follow_up.token}"),
                ),
            )

    def schedule_copy(
        self,
        *,
        queue: str,
        delivery_id: str,
        channel: str,
        payload: dict[str, str],
        attempt: int,
        delay_seconds: float,
        suffix: str,
        meta: Mapping[str, Any],
    ) -> bool:
        """``enqueue_in`` a copy of a job that could not start (its database was unreachable).

        Same arguments, so the copy counts no attempt; ``False`` when this copy was already scheduled.
        """
        try:
            Queue(queue, connection=self._connection).enqueue_in(
                schedule_delay(delay_seconds, self._clock()),
                JOB_FUNC,
                *job_args(delivery_id, channel, payload),
                attempt=attempt,
                **self._options(delivery_id, job_id_for(delivery_id, suffix), meta),
            )
        except DuplicateJobError:
            return False
        return True

    def enqueue_release(self, row: RecoveredDelivery) -> str:
        """`alert-worker release`: the held delivery's job, flagged to pass its per-recipient limit once (§8).

        Enqueued at the front of its queue (an operator is waiting); returns the job id.
        """
        job_id = job_id_for(row.id, f"release-{int(row.stamp.timestamp() * 1000)}")
        Queue(row.queue, connection=self._connection).enqueue(
            JOB_FUNC,
            *job_args(row.id, row.channel, job_payload(row.payload)),
            attempt=row.attempts,
            at_front=True,
            **self._options(row.id, job_id, {RELEASE_META: True}),
        )
        return job_id

    def wait_for_result(
        self, job_id: str, *, timeout_seconds: float, poll_seconds: float = 0.1
    ) -> dict[str, Any] | None:
        """The job's return value once it finished; ``None`` if it failed, vanished or the deadline passed."""
        from rq.job import Job, JobStatus

        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            try:
                job = Job.fetch(job_id, connection=self._connection)
            except Exception:  # noqa: BLE001 - rq raises NoSuchJobError: gone (expired or deleted)
                return None
            status = job.get_status(refresh=False)
            if status == JobStatus.FINISHED:
                value = job.return_value()
                return dict(value) if isinstance(value, dict) else None
            if status in (JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED):
                return None
            time.sleep(poll_seconds)
        return None

    def enqueue_recovered(self, row: RecoveredDelivery, *, kind: str) -> bool:
        """Enqueue a row the sweep or a replay moved, under an id stamped with the move: once per move."""
        return self.enqueue_now(
            queue=row.queue,
            delivery_id=row.id,
            channel=row.channel,
            payload=job_payload(row.payload),
            attempt=row.attempts,
            suffix=f"{kind}-{int(row.stamp.timestamp() * 1000)}",
        )


# docs/contract.md §7.4: jobs a stop left taken but unrun. RQ's texts for the two ways it fails such a job.
STRANDED_AFTER_SECONDS = 10.0  # in the intermediate list, unstarted, since an earlier pass at least this long
STRANDED_FAILURES = ("stuck in intermediate queue", "AbandonedJobError")
_OUR_FUNCS = frozenset({JOB_FUNC, "alert_worker.job.execute_delivery_job", "alert_worker.execute_delivery_job"})
MOVE_BACK_SCRIPT = (  # KEYS: intermediate list, queue; ARGV: job id

    "if redis.call('LREM', KEYS[1], 1, ARGV[1]) > 0 then return redis.call('LPUSH', KEYS[2], ARGV[1]) end return 0"
)


def recover_stranded(
    connection: redis.Redis, queues: Sequence[str], *, with_rows: Callable[[list[str]], set[str]], scan: int = 100
) -> int:
    """Put back the jobs of ``queues`` a stop stranded; returns how many.

    A job in the queue's intermediate list (taken by a worker's dequeue) that no execution started, seen
    there by an earlier pass at least ``STRANDED_AFTER_SECONDS`` ago, goes back to the head of its queue.
    A delivery job RQ failed unrun ("stuck in intermediate queue", or ``AbandonedJobError``, which RQ's
    started-registry clean-up, run here every pass, gives a job whose worker stopped beating; the newest
    ``scan`` failures per queue) is requeued when its delivery has no row: with a row, the sweep's row
    recovery owns it. A duplicate job is harmless (the claim); a job left behind is a lost alert.
    """
    moved = 0
    for name in queues:
        queue = Queue(name, connection=connection)
        stranded = IntermediateQueue(queue.key, connection=connection)
        for job_id in stranded.get_job_ids():
            if job_id in queue.started_job_registry or stranded.set_first_seen(job_id):
                continue
            first = stranded.get_first_seen(job_id)
            if first is not None and time.time() - first.timestamp() >= STRANDED_AFTER_SECONDS:
                moved += int(bool(connection.eval(MOVE_BACK_SCRIPT, 2, stranded.key, queue.key, job_id)))
        queue.started_job_registry.cleanup()  # RQ's maintenance, sooner: a dead worker's jobs -> AbandonedJobError
        failed = queue.failed_job_registry
        jobs = Job.fetch_many(failed.get_job_ids(0, scan - 1, desc=True), connection=connection)
        unrun = [job for job in jobs if job is not None and _failed_unrun(job)]
        known = with_rows([job.args[0] for job in unrun]) if unrun else set()
        for job in unrun:
            if job.args[0] not in known:
                with contextlib.suppress(InvalidJobOperation):
                    failed.requeue(job, at_front=True)
                    moved += 1
    return moved


def _failed_unrun(job: Job) -> bool:
    """A delivery job (its first argument a delivery id) that RQ failed without running it."""
    try:
        if job.func_name not in _OUR_FUNCS or not job.args or not isinstance(job.args[0], str):
            return False
        result = job.latest_result()
    except Exception:  # noqa: BLE001 - one job we cannot read must not stop the others' recovery
        return False
    text = (result.exc_string or "") if result is not None else ""
    return any(reason in text for reason in STRANDED_FAILURES)


def job_payload(payload: Mapping[str, Any] | None) -> dict[str, str]:
    """The job arguments for a stored payload. A row whose arguments could not be stored is enqueued
    empty; its job poisons it."""
    if not payload:
        return {"recipient": "", "subject": "", "body": ""}
    return {k: str(payload.get(k) or "") for k in ("recipient", "subject", "body")}
