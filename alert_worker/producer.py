"""The producer API: record a delivery in Postgres, then enqueue its job (``alert-worker send``).

Back-pressure: when the queue depth (Redis ``alert:queue:depth``) is over ``ALERT_MAX_QUEUE_DEPTH``,
``send_alert`` refuses new deliveries with ``QueueFullError``, and keeps refusing until the depth is
back under 90 % of the limit (hysteresis, shared by every producer through a Redis flag), so a
producer does not flap on and off at the boundary. An id or dedup key that already exists is answered
even while refusing: it creates nothing. When Redis cannot say, the delivery is admitted (docs/contract.md §6.3).

Once the row is committed its id is returned, even when the enqueue then fails (``enqueued=False``):
the sweep enqueues it, and a producer retrying with that id cannot create a second delivery.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import structlog

from alert_worker.counters import Gauge
from alert_worker.delivery import recipient_identity
from alert_worker.errors import AlertWorkerError
from alert_worker.keys import RedisKeys
from alert_worker.settings import Settings
from alert_worker.store import NewDelivery
from alert_worker.validation import storable_payload, validate_job_arguments

log = structlog.get_logger("alert_worker.producer")

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
    enqueued: bool = True  # False: the row is committed but its job is not queued; the sweep enqueues it


@dataclass(frozen=True)
class SendRequest:
    """What a producer asks for; ``delivery_id`` None means a new UUID."""

    channel: str
    recipient: str
    subject: str
    body: str
    delivery_id: str | None = None
    queue: str | None = None
    alert_id: str | None = None
    dedup_key: str | None = None

    def __post_init__(self) -> None:
        if self.delivery_id is not None and not self.delivery_id.strip():
            raise ValueError("delivery_id must not be empty (omit it for a new UUID)")


class ProducerStore(Protocol):
    def recipient_hash_secret(self, configured: str = "") -> str: ...
    def create(self, new: NewDelivery) -> tuple[str, bool]: ...
    def existing_id(self, delivery_id: str | None, dedup_key: str | None) -> str | None: ...


class JobEnqueuer(Protocol):
    def enqueue_now(
        self, *, queue: str, delivery_id: str, channel: str, payload: dict[str, str], attempt: int, suffix: str
    ) -> bool: ...


class QueueAdmission:
    """Refuse over ``max_depth``; once refusing, accept again only below ``resume_fraction * max_depth``.

    Best effort like the gauge it reads: if Redis cannot say, it admits (``check`` returns ``None``).
    """

    def __init__(
        self,
        *,
        client: redis.Redis,
        prefix: str,
        max_depth: int,
        resume_fraction: float = RESUME_FRACTION,
        logger: Any = None,
    ) -> None:
        keys = RedisKeys(prefix)
        self._log = logger or structlog.get_logger("alert_worker.producer")
        self._client = client
        self._depth = Gauge(client=client, key=keys.queue_depth)
        self._flag = keys.queue_refusing
        self.max_depth = max_depth
        self.resume_below = max(0, math.floor(max_depth * resume_fraction))

    def check(self) -> int | None:
        """The depth the delivery was admitted at, ``None`` when Redis could not say; raises ``QueueFullError``."""
        depth = self._depth.get()
        if depth is None:
            self._log.warning("queue_depth_unknown", detail="Redis did not answer; admitting the delivery")
            return None
        try:
            if depth > self.max_depth:
                self._client.set(self._flag, depth)
                raise QueueFullError(depth, self.max_depth, self.resume_below)
            if self._client.exists(self._flag):
                if depth >= self.resume_below:
                    raise QueueFullError(depth, self.max_depth, self.resume_below)
                self._client.delete(self._flag)
        except redis.RedisError:
            self._log.warning("queue_depth_unknown", detail="Redis did not answer; admitting the delivery")
            return None
        return depth


class Producer:
    """Records a delivery, then enqueues its job once; the row always comes first.

    The row's ``recipient_hash`` and mask are those of the normalized recipient (docs/contract.md §6.2), exactly
    as a job creating its own row computes them, so suppression and rate limits see one recipient.
    """

    def __init__(
        self,
        *,
        store: ProducerStore,
        enqueuer: JobEnqueuer,
        queue_depth: Gauge,
        hash_secret: str,
        default_queue: str,
        default_webhook_url: str = "",
    ) -> None:
        self._store = store
        self._default_webhook_url = default_webhook_url  # SLACK_WEBHOOK_URL: what "" and "default" stand for
        self._enqueuer = enqueuer
        self._queue_depth = queue_depth
        self._hash_secret = hash_secret
        self._default_queue = default_queue

    def existing_id(self, request: SendRequest) -> str | None:
        return self._store.existing_id(request.delivery_id, request.dedup_key)

    def record_and_enqueue(self, request: SendRequest) -> SendOutcome:
        """Create the pending row and enqueue its job once. If the enqueue fails, the id is still returned:
        the sweep finds the row (``COALESCE(next_attempt_at, updated_at)``) and enqueues it."""
        delivery_id, channel_type, _ = validate_job_arguments(
            request.delivery_id or str(uuid.uuid4()), request.channel, 0
        )
        payload = storable_payload(request.recipient, request.subject, request.body)
        if payload is None:
            raise ValueError("recipient, subject and body must be text without NUL or lone surrogates, body <= 1 MB")
        secret = self._store.recipient_hash_secret(self._hash_secret)
        queue = request.queue or self._default_queue
        rhash, masked = recipient_identity(
            secret, channel_type, request.recipient, default_webhook_url=self._default_webhook_url
        )
        new = NewDelivery(
            id=delivery_id,
            channel=channel_type.value,
            recipient_masked=masked,
            recipient_hash=rhash,
            payload=payload,
            queue=queue,
            alert_id=request.alert_id,
            dedup_key=request.dedup_key,
        )
        found_id, created = self._store.create(new)
        if not created:
            return SendOutcome(delivery_id=found_id, created=False, enqueued=False)
        self._queue_depth.add(1)
        try:
            self._enqueuer.enqueue_now(
                queue=queue, delivery_id=found_id, channel=channel_type.value, payload=payload, attempt=0, suffix="send"
            )
        except (redis.RedisError, OSError) as exc:
            log.warning(
                "send_enqueue_failed", delivery_id=found_id, channel=channel_type.value, error=type(exc).__name__
            )
            return SendOutcome(delivery_id=found_id, created=True, enqueued=False)
        return SendOutcome(delivery_id=found_id, created=True)


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
    ``ValueError`` for arguments that cannot be a delivery (an empty ``delivery_id`` included).
    """
    from alert_worker.resources import short_lived
    from alert_worker.wiring import collaborators

    settings = settings or Settings.from_env()
    request = SendRequest(channel, recipient, subject, body, delivery_id, queue, alert_id, dedup_key)
    with short_lived(settings) as conns:
        parts = collaborators(settings, pool=conns.database, client=conns.redis)
        producer = Producer(
            store=parts.store,
            enqueuer=parts.enqueuer,
            queue_depth=parts.queue_depth,
            hash_secret=settings.recipient_hash_secret,
            default_queue=settings.queues[0],
            default_webhook_url=settings.slack.default_webhook_url,
        )
        admission = QueueAdmission(
            client=conns.redis, prefix=settings.redis_key_prefix, max_depth=settings.max_queue_depth
        )
        try:
            admission.check()
        except QueueFullError:
            existing = producer.existing_id(request)
            if existing is not None:
                return SendOutcome(delivery_id=existing, created=False, enqueued=False)
            raise
        return producer.record_and_enqueue(request)


__all__ = ["Producer", "QueueAdmission", "QueueFullError", "SendOutcome", "SendRequest", "send_alert"]
