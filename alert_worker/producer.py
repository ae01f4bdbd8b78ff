"""The producer API: record a delivery in Postgres, then enqueue its job (``alert-worker send``).

Back-pressure: when the queue depth (Redis ``alert:queue:depth``) is over ``ALERT_MAX_QUEUE_DEPTH``,
``send_alert`` refuses new deliveries with ``QueueFullError``, and keeps refusing until the depth is
back under 90 % of the limit (hysteresis, shared by every producer through a Redis flag), so a
producer does not flap on and off at the boundary. An id or dedup key that already exists is answered
even while refusing: it creates nothing.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

import redis

from alert_worker.counters import queue_depth
from alert_worker.errors import AlertWorkerError
from alert_worker.redaction import mask_recipient, recipient_hash
from alert_worker.rq_jobs import RqEnqueuer
from alert_worker.settings import Settings
from alert_worker.store import DeliveryStore, NewDelivery
from alert_worker.validation import storable_payload, validate_job_arguments

RESUME_FRACTION = 0.9


class QueueFullError(AlertWorkerError):
    """The queue is over ``ALERT_MAX_QUEUE_DEPTH``: nothing was created or enqueued."""

    def __init__(self, depth: int, max_depth: int, resume_below: int) -> None:
        super().__init__(
            f"queue depth {depth} is over ALERT_MAX_QUEUE_DEPTH={max_depth}: refusing new deliveries "
            f"until it is below {resume_below}"
        )
        self.depth = depth
        self.max_depth = max_depth
        self.resume_below = resume_below


@dataclass(frozen=True)
class SendOutcome:
    delivery_id: str
    created: bool  # False: the id or dedup key existed; nothing was created or enqueued


class QueueAdmission:
    """Refuse over ``max_depth``; once refusing, accept again only below ``resume_fraction * max_depth``.

    Best effort like the gauge it reads: if Redis cannot say, it admits (the enqueue will tell).
    """

    def __init__(
        self, *, client: redis.Redis, prefix: str, max_depth: int, resume_fraction: float = RESUME_FRACTION
    ) -> None:
        self._client = client
        self._depth = queue_depth(client, prefix)
        self._flag = f"{prefix}queue:refusing"
        self.max_depth = max_depth
        self.resume_below = max(0, math.floor(max_depth * resume_fraction))

    def check(self) -> None:
        depth = self._depth.get()
        if depth is None:
            return
        try:
            if depth > self.max_depth:
                self._client.set(self._flag, depth)
                raise QueueFullError(depth, self.max_depth, self.resume_below)
            if self._client.exists(self._flag):
                if depth >= self.resume_below:
                    raise QueueFullError(depth, self.max_depth, self.resume_below)
                self._client.delete(self._flag)
        except redis.RedisError:
            return


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
    key_prefix: str = "alert:",
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
        queue_depth(connection, key_prefix).add(1)
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
    """What ``alert-worker send`` does, from Python: connections from ``DATABASE_URL``/``REDIS_URL``.

    Raises ``QueueFullError`` when the queue is over ``ALERT_MAX_QUEUE_DEPTH`` (see the module doc),
    ``ValueError`` for arguments that cannot be a delivery.
    """
    from alert_worker.resources import short_lived

    settings = settings or Settings.from_env()
    with short_lived(settings) as conns:
        admission = QueueAdmission(
            client=conns.redis, prefix=settings.redis_key_prefix, max_depth=settings.max_queue_depth
        )
        try:
            admission.check()
        except QueueFullError:
            existing = conns.store.existing_id(delivery_id, dedup_key)
            if existing is not None:
                return SendOutcome(delivery_id=existing, created=False)
            raise
        return record_and_enqueue(
            store=conns.store,
            connection=conns.redis,
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
            key_prefix=settings.redis_key_prefix,
        )


__all__ = ["QueueAdmission", "QueueFullError", "SendOutcome", "record_and_enqueue", "send_alert"]
