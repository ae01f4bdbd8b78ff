"""One RQ job's life around the executor: check arguments, open per-job resources, run, close, recover.

``alert_worker.entrypoint.execute_delivery_job`` (the import path producers enqueue, docs/contract.md §1) is
this module's function. A job that cannot reach Postgres before its claim schedules a copy of itself
(docs/contract.md §6.3) and then raises, so RQ records the failure and the alert is still delivered once
Postgres is back. Module-level imports are what every delivery needs: the worker preloads this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
import structlog

from alert_worker.executor import DeliveryRequest
from alert_worker.logs import ensure_logging
from alert_worker.models import DeliveryResult
from alert_worker.resources import JobResources, closing_resources, open_resources_for
from alert_worker.rq_jobs import RELEASE_META, RqEnqueuer, current_job
from alert_worker.settings import Settings
from alert_worker.validation import validate_job_arguments
from alert_worker.wiring import DatabaseUnreachableError, build_executor, enqueuer_for

log = structlog.get_logger("alert_worker.job")

DB_WAIT_META = "alert_db_wait"  # job meta of a database-wait copy: {"since": epoch s, "copies": n}


def job_request(
    delivery_id: Any, channel: Any, recipient: Any, subject: Any, body: Any, attempt: Any
) -> tuple[Settings, DeliveryRequest]:
    """Check the job's arguments (``ValueError`` before any I/O), read settings, name the origin queue."""
    delivery_id, channel_type, attempt = validate_job_arguments(delivery_id, channel, attempt)
    settings = Settings.from_env()
    ensure_logging(settings.log_format)
    job = current_job()
    request = DeliveryRequest(
        delivery_id=delivery_id,
        channel=channel_type,
        recipient=recipient,
        subject=subject,
        body=body,
        attempt=attempt,
        queue=job.origin if job is not None else settings.queues[0],
        job_id=job.id if job is not None else None,
        release=job is not None and job.meta.get(RELEASE_META) is True,
    )
    return settings, request


def run_delivery_job(
    request: DeliveryRequest,
    *,
    settings: Settings,
    open_resources: Callable[[Settings], JobResources] = open_resources_for,
    make_executor: Callable[[Settings, JobResources], Any] = build_executor,
) -> DeliveryResult:
    """One delivery; job-scoped resources are closed on the way out, process-scoped ones are kept."""
    with closing_resources(open_resources(settings)) as resources:
        result: DeliveryResult = make_executor(settings, resources).run(request)
    return result


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def defer_while_database_unreachable(
    request: DeliveryRequest,
    *,
    settings: Settings,
    meta: Mapping[str, Any],
    enqueuer: RqEnqueuer,
    clock: Callable[[], float] = time.time,
) -> bool:
    """Schedule this job's copy after the next retry delay; ``False`` once ``ALERT_MAX_DEFER_SECONDS`` is spent.

    The copy has the same arguments (no attempt counted), a deterministic id from the first failure's
    time and the copy's number, and carries both in its meta so the bound spans every copy.
    """
    now = clock()
    wait = meta.get(DB_WAIT_META) or {}
    since, copies = float(wait.get("since", now)), int(wait.get("copies", 0))
    delay = settings.retry_delays[min(copies, len(settings.retry_delays) - 1)]
    fields = {"delivery_id": request.delivery_id, "channel": request.channel.value, "attempt": request.attempt + 1}
    if now - since + delay > settings.max_defer_seconds:
        log.error("database_unreachable_gave_up", waited_seconds=round(now - since), **fields)
        return False
    enqueuer.schedule_copy(
        queue=request.queue,
        delivery_id=request.delivery_id,
        channel=request.channel.value,
        payload={"recipient": _text(request.recipient), "subject": _text(request.subject), "body": _text(request.body)},
        attempt=request.attempt,
        delay_seconds=delay,
        suffix=f"dbwait-{int(since * 1000)}-{copies + 1}",
        meta={DB_WAIT_META: {"since": since, "copies": copies + 1}},
    )
    log.warning("database_unreachable_job_copied", delay_seconds=delay, copy=copies + 1, **fields)
    return True


def execute_delivery_job(
    delivery_id: str,
    channel: str,
    recipient: str,
    subject: str,
    body: str,
    attempt: int = 0,
) -> DeliveryResult:
    """Deliver one alert at most once per claim; see docs/contract.md §1 for arguments and the result.

    Raises ``ValueError`` for a bad ``delivery_id``, ``channel`` or ``attempt`` before any I/O; every
    other bad input ends as a poisoned delivery. Never sleeps: retries and deferrals go to RQ's scheduler.
    """
    settings, request = job_request(delivery_id, channel, recipient, subject, body, attempt)
    try:
        return run_delivery_job(request, settings=settings)
    except DatabaseUnreachableError as exc:
        job = current_job()
        try:
            defer_while_database_unreachable(
                request, settings=settings, meta=job.meta if job else {}, enqueuer=enqueuer_for(settings)
            )
        except redis.RedisError as lost:
            log.error("database_unreachable_copy_failed", delivery_id=request.delivery_id, error=type(lost).__name__)
        raise exc
