"""A re-creation of the reference design's per-job resource pattern, for comparison only.

Each job runs ``asyncio.run`` around an ``AsyncConnectionPool`` and a ``redis.asyncio`` client it opens
and closes itself, and does the same SQL and Redis work as our job on the happy path: the one-statement
create-and-claim, ``INCRBY`` of the queue-depth gauge, the e-mail send, the fenced ``mark_delivered``
UPDATE, ``INCRBY -1`` and the same three log lines. It is given every advantage: a one-connection pool,
the same lean SMTP channel called directly (no thread hop), no rate-limit script (the bench disables
limits for every variant). It lives in ``bench/`` only; the package is synchronous.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis.asyncio as aioredis
import structlog
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from alert_worker.channels import build_channel
from alert_worker.logs import ensure_logging
from alert_worker.models import ChannelType, Message
from alert_worker.redaction import mask_recipient, recipient_hash
from alert_worker.settings import Settings
from alert_worker.validation import clean_content, clean_recipient, storable_payload, validate_job_arguments

# Copied from alert_worker.store (claim and mark_delivered) so the database does identical work.
CLAIM_SQL = """
INSERT INTO alert_deliveries AS d
    (id, channel, recipient, recipient_hash, status, payload, queue, claim_token, last_attempt_at)
VALUES (%(id)s, %(channel)s, %(masked)s, %(hash)s, 'in_progress', %(payload)s, %(queue)s, %(token)s, now())
ON CONFLICT (id) DO UPDATE
   SET status = 'in_progress', claim_token = EXCLUDED.claim_token,
       last_attempt_at = now(), updated_at = now(),
       attempts = d.attempts + (d.status = 'in_progress')::int
 WHERE (d.status = 'pending' AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= now()))
    OR (d.status = 'in_progress' AND d.last_attempt_at < now() - make_interval(secs => %(stuck)s))
RETURNING id, channel, status, attempts, payload, (xmax = 0) AS created
"""
DELIVERED_SQL = """
UPDATE alert_deliveries
   SET status = 'delivered', attempts = %(attempts)s, delivered_at = now(),
       provider_message_id = %(mid)s, error_message = NULL, payload = NULL,
       next_attempt_at = NULL, deferred_since = NULL, updated_at = now()
 WHERE id = %(id)s AND claim_token = %(token)s AND status = 'in_progress'
RETURNING EXTRACT(EPOCH FROM now() - created_at)::float8
"""

log = structlog.get_logger("bench.reference")


async def _deliver(settings: Settings, delivery_id: str, channel: ChannelType, payload: dict[str, Any]) -> str:
    pool = AsyncConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=1,
        num_workers=1,
        kwargs={"autocommit": True, "connect_timeout": 5},
        open=False,
    )
    await pool.open()
    client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=10)
    depth_key = f"{settings.redis_key_prefix}queue:depth"
    try:
        token = str(uuid.uuid4())
        rhash = recipient_hash(settings.recipient_hash_secret, channel.value, payload["recipient"])
        async with pool.connection() as conn:
            cur = await conn.execute(
                CLAIM_SQL,
                {
                    "id": delivery_id,
                    "channel": channel.value,
                    "masked": mask_recipient(channel, payload["recipient"]),
                    "hash": rhash,
                    "payload": Jsonb(payload),
                    "queue": "alerts",
                    "token": token,
                    "stuck": settings.stuck_after_seconds,
                },
            )
            row = await cur.fetchone()
        if row is None:
            return "skipped"
        if row[5]:
            await client.incrby(depth_key, 1)
        bound = log.bind(delivery_id=delivery_id, channel=channel.value, attempt=row[3] + 1, recipient_hash=rhash)
        bound.info("delivery_claimed", created=bool(row[5]))
        subject, body = clean_content(row[4]["subject"], row[4]["body"])
        message = Message(
            delivery_id=delivery_id,
            channel=channel,
            recipient=clean_recipient(row[4]["recipient"]),
            subject=subject,
            body=body,
            attempt=row[3],
        )
        sender = build_channel(channel, settings)
        try:
            bound.info("delivery_attempt")
            receipt = sender.send(sender.prepare(message))
        finally:
            sender.close()
        async with pool.connection() as conn:
            cur = await conn.execute(
                DELIVERED_SQL,
                {"id": delivery_id, "token": token, "attempts": row[3] + 1, "mid": receipt.message_id},
            )
            (latency,) = await cur.fetchone() or (0.0,)
        await client.incrby(depth_key, -1)
        bound.info("delivery_delivered", latency_seconds=round(latency, 3))
        return "delivered"
    finally:
        await pool.close()
        await client.aclose()


def execute_delivery_job(
    delivery_id: str, channel: str, recipient: str, subject: str, body: str, attempt: int = 0
) -> str:
    """Same arguments as ``alert_worker.entrypoint.execute_delivery_job``; one event loop per job."""
    delivery_id, channel_type, attempt = validate_job_arguments(delivery_id, channel, attempt)
    settings = Settings.from_env()
    ensure_logging(settings.log_format)
    payload = storable_payload(recipient, subject, body)
    assert payload is not None
    return asyncio.run(_deliver(settings, delivery_id, channel_type, payload))
