"""The RQ job ``execute_delivery_job`` and the process entry point ``main``.

Producers enqueue ``alert_worker.entrypoint.execute_delivery_job`` by import path: its name and argument
order are the wire format (CONTRACT §1). Each job gets its connections from ``alert_worker.resources``
(its own pool and Redis client by default, closed on the way out even when delivery raises), builds its
poison queue, rate limiter and executor on them, and runs one delivery. Module-level imports stay light:
every forked RQ work-horse that was not preloaded re-imports this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rq import get_current_job

from alert_worker.channels import build_channel
from alert_worker.counters import poison_count, queue_depth
from alert_worker.executor import DeliveryExecutor, DeliveryRequest
from alert_worker.feedback import build_feedback
from alert_worker.logs import ensure_logging
from alert_worker.metrics import RedisMetrics
from alert_worker.models import DeliveryResult
from alert_worker.poison import PoisonQueue
from alert_worker.rate_limit import RateLimiter
from alert_worker.resources import JobResources, closing_resources, open_resources_for
from alert_worker.retry import RetryPolicy
from alert_worker.rq_jobs import RqEnqueuer
from alert_worker.settings import Settings
from alert_worker.store import DeliveryStore
from alert_worker.validation import validate_job_arguments


def build_executor(settings: Settings, resources: JobResources) -> DeliveryExecutor:
    """Wire one job's collaborators; tests build ``DeliveryExecutor`` directly with fakes."""
    job = get_current_job()  # its worker_name is the claimant the dead-worker reclaim checks
    store = DeliveryStore(
        pool=resources.pool,
        stuck_after_seconds=settings.stuck_after_seconds,
        claimed_by=job.worker_name if job is not None else None,
    )
    prefix = settings.redis_key_prefix
    hash_secret = store.recipient_hash_secret(settings.recipient_hash_secret)
    metrics = RedisMetrics(client=resources.redis, prefix=prefix)
    return DeliveryExecutor(
        store=store,
        poison_queue=PoisonQueue(store=store, gauge=poison_count(resources.redis, prefix)),
        limiter=RateLimiter(client=resources.redis, key_prefix=prefix),
        channel_factory=lambda channel: build_channel(channel, settings),
        scheduler=RqEnqueuer(connection=resources.redis, job_timeout_seconds=settings.job_timeout_seconds),
        retry_policy=RetryPolicy(
            max_attempts=settings.max_attempts,
            delays=settings.retry_delays,
            max_retry_delay_seconds=settings.max_retry_delay_seconds,
        ),
        rate_limits=settings.rate_limits,
        queue_depth=queue_depth(resources.redis, prefix),
        hash_secret=hash_secret,
        default_webhook_url=settings.slack.default_webhook_url,
        max_defer_seconds=settings.max_defer_seconds,
        metrics=metrics,
        feedback=build_feedback(settings, resources.pool, resources.redis, hash_secret=hash_secret, metrics=metrics),
    )


def job_request(
    delivery_id: Any, channel: Any, recipient: Any, subject: Any, body: Any, attempt: Any
) -> tuple[Settings, DeliveryRequest]:
    """Check the job's arguments (``ValueError`` before any I/O), read settings, name the origin queue."""
    delivery_id, channel_type, attempt = validate_job_arguments(delivery_id, channel, attempt)
    settings = Settings.from_env()
    ensure_logging(settings.log_format)
    job = get_current_job()
    request = DeliveryRequest(
        delivery_id=delivery_id,
        channel=channel_type,
        recipient=recipient,
        subject=subject,
        body=body,
        attempt=attempt,
        queue=job.origin if job is not None else settings.queues[0],
        job_id=job.id if job is not None else None,
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


def execute_delivery_job(
    delivery_id: str,
    channel: str,
    recipient: str,
    subject: str,
    body: str,
    attempt: int = 0,
) -> DeliveryResult:
    """Deliver one alert at most once per claim; see CONTRACT §1 for arguments and the result.

    Raises ``ValueError`` for a bad ``delivery_id``, ``channel`` or ``attempt`` before any I/O; every
    other bad input ends as a poisoned delivery. Never sleeps: retries and deferrals go to RQ's scheduler.
    """
    settings, request = job_request(delivery_id, channel, recipient, subject, body, attempt)
    return run_delivery_job(request, settings=settings)


def main(argv: list[str] | None = None) -> int:
    """``alert-worker`` / ``python -m alert_worker``: the CLI, whose default command runs the worker."""
    from alert_worker.cli import main as cli_main

    return cli_main(argv)
