"""The producer API: record a delivery in Postgres, then enqueue its job (``alert-worker send``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import redis

from alert_worker.redaction import mask_recipient, recipient_hash
from alert_worker.rq_jobs import RqEnqueuer
from alert_worker.settings import Settings
from alert_worker.store import DeliveryStore, NewDelivery
from alert_worker.validation import storable_payload, validate_job_arguments


@dataclass(frozen=True)
class SendOutcome:
    delivery_id: str
    created: bool  # False: the id or dedup key existed; nothing was created or enqueued


def record_and_enqueue(
    *,
    store: DeliveryStore,
    connection: redis.Redis,
    channel: str,
    recipient: str,
    subject: str,
    body: str,
    delivery_id: str | None = None,
    queue: str = "alerts",
    alert_id: str | None = None,
    dedup_key: str | None = None,
    hash_secret: str = "",
    job_timeout_seconds: int = 60,
) -> SendOutcome:
    """Create the pending row and enqueue its job once. The row comes first: if the enqueue is lost,
    the sweep finds the row (``COALESCE(next_attempt_at, updated_at)``) and enqueues it."""
    delivery_id, channel_type, _ = validate_job_arguments(delivery_id or str(uuid.uuid4()), channel, 0)
    payload = storable_payload(recipient, subject, body)
    if payload is None:
        raise ValueError("recipient, subject and body must be text without NUL or lone surrogates, body <= 1 MB")
    store_secret = store.recipient_hash_secret(hash_secret)
    new = NewDelivery(
        id=delivery_id,
        channel=channel_type.value,
        recipient_masked=mask_recipient(channel_type, recipient),
        recipient_hash=recipient_hash(store_secret, channel_type.value, recipient),
        payload=payload,
        queue=queue,
        alert_id=alert_id,
        dedup_key=dedup_key,
    )
    found_id, created = store.create(new)
    if created:
        RqEnqueuer(connection=connection, job_timeout_seconds=job_timeout_seconds).enqueue_now(
            queue=queue, delivery_id=found_id, channel=channel_type.value, payload=payload, attempt=0, suffix="send"
        )
    return SendOutcome(delivery_id=found_id, created=created)


def send_alert(
    channel: str,
    recipient: str,
    subject: str,
    body: str,
    *,
    delivery_id: str | None = None,
    queue: str | None = None,
    alert_id: str | None = None,
    dedup_key: str | None = None,
    settings: Settings | None = None,
) -> SendOutcome:
    """What ``alert-worker send`` does, from Python: connections from ``DATABASE_URL``/``REDIS_URL``."""
    from alert_worker.entrypoint import JobResources, closing_resources, open_job_resources

    settings = settings or Settings.from_env()
    resources: JobResources = open_job_resources(settings)
    with closing_resources(resources):
        return record_and_enqueue(
            store=DeliveryStore(pool=resources.pool, stuck_after_seconds=settings.stuck_after_seconds),
            connection=resources.redis,
            channel=channel,
            recipient=recipient,
            subject=subject,
            body=body,
            delivery_id=delivery_id,
            queue=queue or settings.queues[0],
            alert_id=alert_id,
            dedup_key=dedup_key,
            hash_secret=settings.recipient_hash_secret,
            job_timeout_seconds=settings.job_timeout_seconds,
        )


__all__ = ["SendOutcome", "record_and_enqueue", "send_alert"]
