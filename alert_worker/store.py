"""Every state change of a delivery: one SQL statement each, timed by the database clock.

Writes made on behalf of a job are fenced by the row's ``claim_token``: a job whose claim was taken over
(stuck reclaim) gets ``ClaimLostError`` instead of overwriting the newer claimer's state.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from psycopg.errors import UniqueViolation
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from alert_worker.digest import CARRIED_UNKNOWN_PREFIX, HELD_SQL
from alert_worker.errors import ClaimLostError, MessageIdTakenError
from alert_worker.intake import IntakeStatements
from alert_worker.intake import NewDelivery as NewDelivery  # re-exported: callers import it from here
from alert_worker.models import DeliveryRow, DeliveryStatus
from alert_worker.recovery import LOST_ATTEMPT_CONFLICT, RecoveryStatements
from alert_worker.recovery import RecoveredDelivery as RecoveredDelivery  # re-exported: callers import it from here

_ROW_COLUMNS = (
    "id, channel, status, attempts, deferrals, recipient_hash, payload, queue, deferred_since, "
    "next_attempt_at, claim_token"
)


_MARK_DELIVERED = """
    UPDATE alert_deliveries
       SET status = 'delivered', attempts = %(attempts)s, delivered_at = now(),
           provider_message_id = %(mid)s, delivered_via = %(via)s, error_message = NULL, payload = NULL,
           next_attempt_at = NULL, deferred_since = NULL, updated_at = now()
"""


def _row(values: tuple[Any, ...], db_now: datetime | None = None) -> DeliveryRow:
    (id_, channel, status, attempts, deferrals, rhash, payload, queue, deferred_since, next_at, token) = values
    return DeliveryRow(
        id=id_,
        channel=channel,
        status=DeliveryStatus(status),
        attempts=attempts,
        deferrals=deferrals,
        recipient_hash=rhash,
        payload=payload,
        queue=queue,
        deferred_since=deferred_since,
        next_attempt_at=next_at,
        claim_token=str(token) if token else None,
        db_now=db_now,
    )


@dataclass(frozen=True)
class CarriedClaim:
    """A held delivery claimed to ride in another delivery's message (§8): its row and its own claim token."""

    row: DeliveryRow
    token: str


@dataclass(frozen=True)
class Claim:
    """A won claim: the row as it is now, and whether this job created it."""

    row: DeliveryRow
    token: str
    created: bool
    others_held: bool = True  # some delivery to this channel and recipient is held (§8): worth carrying


class DeliveryStore(IntakeStatements, RecoveryStatements):
    """Postgres access for ``alert_deliveries``. Owns no connection: the pool is passed in.

    The schema, the hash secret and the producer's insert live in ``alert_worker.intake``; the sweep's and
    the operators' statements in ``alert_worker.recovery``. This module keeps the job's claim and its fenced
    writes.
    """

    def __init__(self, *, pool: ConnectionPool, stuck_after_seconds: int = 900, claimed_by: str | None = None) -> None:
        self._pool = pool
        self._stuck_after_seconds = stuck_after_seconds
        self._claimed_by = claimed_by  # the RQ worker's name, written by every claim (dead-worker reclaim)

    # -- the job's claim ---------------------------------------------------------------------------
    def claim(self, new: NewDelivery) -> Claim | None:
        """Create the row if missing and claim it, atomically; ``None`` when it is not ours to send.

        Claimable: pending and due, or in progress with a claim older than the stuck threshold. A stuck
        reclaim counts the lost attempt, so a delivery that crashes its worker every time still ends, and,
        for an SMS, records an unknown outcome from the lost claim's ``last_attempt_at`` in the same
        statement: the lost attempt may have sent it, so this one looks it up first (docs/contract.md §7.1).
        """
        token = str(uuid.uuid4())
        with self._pool.connection() as conn:
            found = conn.execute(
                f"""
                WITH before AS (
                    SELECT status, last_attempt_at FROM alert_deliveries WHERE id = %(id)s
                ), claimed AS (
                INSERT INTO alert_deliveries AS d
                    (id, channel, recipient, recipient_hash, status, payload, queue, claim_token,
                     last_attempt_at, claimed_by)
                VALUES (%(id)s, %(channel)s, %(masked)s, %(hash)s, 'in_progress', %(payload)s, %(queue)s,
                        %(token)s, now(), %(claimed_by)s)
                ON CONFLICT (id) DO UPDATE
                   SET status = 'in_progress', claim_token = EXCLUDED.claim_token,
                       claimed_by = EXCLUDED.claimed_by,
                       last_attempt_at = now(), updated_at = now(),
                       attempts = d.attempts + (d.status = 'in_progress')::int
                 WHERE (d.status = 'pending' AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= now()))
                    OR (d.status = 'in_progress'
                        AND d.last_attempt_at < now() - make_interval(secs => %(stuck)s))
                RETURNING {_ROW_COLUMNS}, (xmax = 0) AS created, now() AS db_now,
                          EXISTS (SELECT 1 FROM alert_deliveries AS h
                                   WHERE h.channel = d.channel AND h.recipient_hash = d.recipient_hash
                                     AND h.id <> d.id AND {HELD_SQL}) AS others_held
                ), lost AS (
                INSERT INTO alert_unknown_outcomes (delivery_id, channel, attempt_started_at)
                SELECT c.id, c.channel, b.last_attempt_at FROM claimed c CROSS JOIN before b
                 WHERE b.status = 'in_progress' AND c.channel = 'sms' AND b.last_attempt_at IS NOT NULL
                {LOST_ATTEMPT_CONFLICT}
                )
                SELECT * FROM claimed
                """,
                {
                    "id": new.id,
                    "channel": new.channel,
                    "masked": new.recipient_masked,
                    "hash": new.recipient_hash,
                    "payload": Jsonb(new.payload) if new.payload else None,
                    "queue": new.queue,
                    "token": token,
                    "stuck": self._stuck_after_seconds,
                    "claimed_by": self._claimed_by,
                },
            ).fetchone()
        if found is None:
            return None
        return Claim(
            row=_row(found[:11], db_now=found[12]), token=token, created=bool(found[11]), others_held=bool(found[13])
        )

    def get(self, delivery_id: str) -> DeliveryRow | None:
        with self._pool.connection() as conn:
            found = conn.execute(
                f"SELECT {_ROW_COLUMNS}, now() FROM alert_deliveries WHERE id = %s", (delivery_id,)
            ).fetchone()
        return None if found is None else _row(found[:11], db_now=found[11])

    # -- fenced writes: only the current claimer may move the row ---------------------------------
    def _fenced(self, sql: str, params: dict[str, Any]) -> tuple[Any, ...]:
        with self._pool.connection() as conn:
            found = conn.execute(
                sql
                + " WHERE id = %(id)s AND claim_token = %(token)s AND status = 'in_progress' RETURNING "
                + params.pop("_returning"),
                params,
            ).fetchone()
        if found is None:
            raise ClaimLostError(f"claim on delivery {params['id']!r} was lost")
        return tuple(found)

    def mark_delivered(
        self, delivery_id: str, token: str, *, attempts: int, message_id: str | None, delivered_via: str | None = None
    ) -> float:
        """Record acceptance; erase the payload. Returns seconds from row creation to acceptance.

        ``delivered_via``: the delivery whose message carried this one (then ``message_id`` is ``None``).
        ``MessageIdTakenError`` when another row holds ``message_id`` (a unique index, docs/contract.md §7.1).
        """
        try:
            (latency,) = self._fenced(
                _MARK_DELIVERED,
                {
                    "id": delivery_id,
                    "token": token,
                    "attempts": attempts,
                    "mid": message_id,
                    "via": delivered_via,
                    "_returning": "EXTRACT(EPOCH FROM now() - created_at)::float8",
                },
            )
        except UniqueViolation as exc:
            raise MessageIdTakenError(f"provider message id of delivery {delivery_id!r} is another's") from exc
        return float(latency)

    # -- alert storms (§8): held deliveries carried by another delivery's message -----------------------
    def claim_held(self, *, channel: str, recipient_hash: str, exclude_id: str, limit: int) -> list[CarriedClaim]:
        """Claim up to ``limit`` held deliveries of this channel and recipient, oldest first, each with its
        own claim token (fenced like any claim; reclaimable like any ``in_progress`` row if the worker dies).

        Never a held row with an unknown outcome of its own (its own job looks the provider up first, §7.1).
        ``SKIP LOCKED``: a row another job is claiming right now is left to it.
        """
        if limit < 1:
            return []
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"""
                WITH c AS MATERIALIZED (
                    SELECT id FROM alert_deliveries
                     WHERE channel = %(channel)s AND recipient_hash = %(hash)s AND id <> %(id)s
                       AND payload IS NOT NULL AND {HELD_SQL}
                       AND NOT EXISTS (SELECT 1 FROM alert_unknown_outcomes AS u
                                        WHERE u.delivery_id = alert_deliveries.id)
                     ORDER BY created_at, id
                     LIMIT %(limit)s
                     FOR UPDATE SKIP LOCKED)
                UPDATE alert_deliveries AS d
                   SET status = 'in_progress', claim_token = gen_random_uuid(), claimed_by = %(claimed_by)s,
                       last_attempt_at = now(), updated_at = now()
                  FROM c
                 WHERE d.id = c.id AND d.status = 'pending'
                RETURNING {", ".join("d." + c.strip() for c in _ROW_COLUMNS.split(","))}, now(), d.created_at
                """,
                {
                    "channel": channel,
                    "hash": recipient_hash,
                    "id": exclude_id,
                    "limit": limit,
                    "claimed_by": self._claimed_by,
                },
            ).fetchall()
        claims = [
            CarriedClaim(row=replace(_row(r[:11], db_now=r[11]), created_at=r[12]), token=str(r[10])) for r in rows
        ]
        return sorted(claims, key=lambda c: (c.row.created_at or datetime.min, c.row.id))

    def carried_outcome_unknown(
        self,
        carried: list[CarriedClaim],
        *,
        carrier_id: str,
        started_at: datetime | None,
        sent_sha256: str | None,
    ) -> list[str]:
        """The carrier's send had an unknown outcome: each carried row goes back ``pending``, due now and *not*
        held (``error_message`` ``outcome_unknown: carried by <carrier>``: no other message carries it), fenced
        on its claim; its own job ends it (the sweep enqueues it). ``sent_sha256`` (an SMS): each also gets its
        own unknown outcome, the carrier's window and text and ``carried_by``, so its look-up can find the
        carrier's message (§7.1, §8). One transaction. Returns the ids written."""
        if not carried:
            return []
        with self._pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                """
                UPDATE alert_deliveries AS d
                   SET status = 'pending', claim_token = NULL, claimed_by = NULL, error_message = %(error)s,
                       next_attempt_at = now(), updated_at = now()
                  FROM unnest(%(ids)s::text[], %(tokens)s::uuid[]) AS c(id, token)
                 WHERE d.id = c.id AND d.claim_token = c.token AND d.status = 'in_progress'
                RETURNING d.id, d.channel
                """,
                {
                    "ids": [c.row.id for c in carried],
                    "tokens": [c.token for c in carried],
                    "error": CARRIED_UNKNOWN_PREFIX + carrier_id,
                },
            ).fetchall()
            if rows and sent_sha256 is not None:
                conn.execute(
                    """
                    INSERT INTO alert_unknown_outcomes
                        (delivery_id, channel, attempt_started_at, sent_sha256, carried_by)
                    SELECT w.id, w.channel, COALESCE(%(started)s, now()), %(sha)s, %(carrier)s
                      FROM unnest(%(ids)s::text[], %(channels)s::text[]) AS w(id, channel)
                    ON CONFLICT (delivery_id) DO UPDATE
                       SET attempt_started_at = EXCLUDED.attempt_started_at, sent_sha256 = EXCLUDED.sent_sha256,
                           carried_by = EXCLUDED.carried_by
                    """,
                    {
                        "ids": [r[0] for r in rows],
                        "channels": [r[1] for r in rows],
                        "started": started_at,
                        "sha": sent_sha256,
                        "carrier": carrier_id,
                    },
                )
        return [str(r[0]) for r in rows]

    def release_carried(self, carried: list[CarriedClaim], *, sent_unrecorded: bool = False) -> int:
        """Hand carried claims back. Their message was not sent: pending and held again, as they were.
        ``sent_unrecorded``: it was sent but not recorded: pending, due now and *not* held (so no other
        message carries it), for its own job to find its sent marker (the sweep enqueues it)."""
        if not carried:
            return 0
        with self._pool.connection() as conn:
            rows = conn.execute(
                """
                UPDATE alert_deliveries AS d
                   SET status = 'pending', claim_token = NULL, updated_at = now(),
                       error_message = CASE WHEN %(unrecorded)s THEN 'sent_unrecorded: carried' ELSE error_message END,
                       next_attempt_at = CASE WHEN %(unrecorded)s THEN now() ELSE next_attempt_at END
                  FROM unnest(%(ids)s::text[], %(tokens)s::uuid[]) AS c(id, token)
                 WHERE d.id = c.id AND d.claim_token = c.token AND d.status = 'in_progress'
                RETURNING d.id
                """,
                {
                    "ids": [c.row.id for c in carried],
                    "tokens": [c.token for c in carried],
                    "unrecorded": sent_unrecorded,
                },
            ).fetchall()
        return len(rows)

    def mark_delivered_carrying(
        self,
        delivery_id: str,
        token: str,
        *,
        attempts: int,
        message_id: str | None,
        carried: list[CarriedClaim],
    ) -> tuple[float, list[str]]:
        """The carrier's ``delivered`` and its carried deliveries' ``delivered`` (``delivered_via`` = the
        carrier, no provider id), in one transaction, each fenced on its own claim.

        A lost carrier claim writes nothing (``ClaimLostError``). Returns the carrier's latency and the
        carried ids whose claim was lost (written nothing: the caller keeps their sent markers).
        """
        with self._pool.connection() as conn, conn.transaction():
            try:
                found = conn.execute(
                    _MARK_DELIVERED + " WHERE id = %(id)s AND claim_token = %(token)s AND status = 'in_progress' "
                    "RETURNING EXTRACT(EPOCH FROM now() - created_at)::float8",
                    {"id": delivery_id, "token": token, "attempts": attempts, "mid": message_id, "via": None},
                ).fetchone()
            except UniqueViolation as exc:  # a looked-up id another delivery holds (§7.1): nothing written
                raise MessageIdTakenError(f"provider message id of delivery {delivery_id!r} is another's") from exc
            if found is None:
                raise ClaimLostError(f"claim on delivery {delivery_id!r} was lost")
            written = conn.execute(
                """
                UPDATE alert_deliveries AS d
                   SET status = 'delivered', attempts = d.attempts + 1, delivered_at = now(),
                       delivered_via = %(via)s, provider_message_id = NULL, error_message = NULL, payload = NULL,
                       next_attempt_at = NULL, deferred_since = NULL, updated_at = now()
                  FROM unnest(%(ids)s::text[], %(tokens)s::uuid[]) AS c(id, token)
                 WHERE d.id = c.id AND d.claim_token = c.token AND d.status = 'in_progress'
                RETURNING d.id
                """,
                {"via": delivery_id, "ids": [c.row.id for c in carried], "tokens": [c.token for c in carried]},
            ).fetchall()
        done = {r[0] for r in written}
        return float(found[0]), [c.row.id for c in carried if c.row.id not in done]

    def oldest_held(self, *, channel: str, recipient_hash: str) -> RecoveredDelivery | None:
        """The oldest held delivery of a recipient, made due now (``alert-worker release``), or ``None``."""
        with self._pool.connection() as conn:
            found = conn.execute(
                f"""
                UPDATE alert_deliveries SET next_attempt_at = now(), updated_at = now()
                 WHERE id = (SELECT id FROM alert_deliveries
                              WHERE channel = %s AND recipient_hash = %s AND payload IS NOT NULL AND {HELD_SQL}
                              ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
                RETURNING id, channel, payload, queue, attempts, now()
                """,
                (channel, recipient_hash),
            ).fetchone()
        return None if found is None else RecoveredDelivery(*found)

    def carried_count(self, delivery_id: str) -> int:
        """How many deliveries name ``delivery_id`` in ``delivered_via``."""
        with self._pool.connection() as conn:
            found = conn.execute(
                "SELECT count(*) FROM alert_deliveries WHERE delivered_via = %s AND status = 'delivered'",
                (delivery_id,),
            ).fetchone()
        return int(found[0]) if found else 0

    def schedule_retry(
        self, delivery_id: str, token: str, *, attempts: int, delay_seconds: float, error: str
    ) -> tuple[datetime, datetime]:
        """Back to pending after a failed send; returns (next_attempt_at, database now)."""
        next_at, now = self._fenced(
            """
            UPDATE alert_deliveries
               SET status = 'pending', attempts = %(attempts)s, error_message = %(error)s,
                   next_attempt_at = now() + make_interval(secs => %(delay)s),
                   deferred_since = NULL, updated_at = now()
            """,
            {
                "id": delivery_id,
                "token": token,
                "attempts": attempts,
                "delay": delay_seconds,
                "error": error,
                "_returning": "next_attempt_at, now()",
            },
        )
        return next_at, now

    def defer(
        self, delivery_id: str, token: str, *, delay_seconds: float, error: str, budgeted: bool = True
    ) -> tuple[datetime, datetime]:
        """Back to pending after a rate-limit denial, without using an attempt.

        ``budgeted=False``: a hold on the per-recipient limit (§8), which never counts toward
        ``ALERT_MAX_DEFER_SECONDS``: it ends the run of deferrals instead of extending it.
        """
        next_at, now = self._fenced(
            """
            UPDATE alert_deliveries
               SET status = 'pending', deferrals = deferrals + 1,
                   deferred_since = CASE WHEN %(budgeted)s THEN COALESCE(deferred_since, now()) END,
                   error_message = %(error)s,
                   next_attempt_at = now() + make_interval(secs => %(delay)s), updated_at = now()
            """,
            {
                "id": delivery_id,
                "token": token,
                "delay": delay_seconds,
                "error": error,
                "budgeted": budgeted,
                "_returning": "next_attempt_at, now()",
            },
        )
        return next_at, now

    def poison(self, delivery_id: str, token: str, *, attempts: int, error: str) -> None:
        """Park the delivery; the payload stays so an operator can replay it."""
        self._fenced(
            """
            UPDATE alert_deliveries
               SET status = 'poison', attempts = %(attempts)s, poison_at = now(), error_message = %(error)s,
                   next_attempt_at = NULL, updated_at = now()
            """,
            {"id": delivery_id, "token": token, "attempts": attempts, "error": error, "_returning": "id"},
        )

    def release(self, delivery_id: str, token: str, *, error: str) -> None:
        """Give the claim back without an attempt; the sweep re-enqueues it after its grace period."""
        self._fenced(
            """
            UPDATE alert_deliveries
               SET status = 'pending', next_attempt_at = NULL, error_message = %(error)s, updated_at = now()
            """,
            {"id": delivery_id, "token": token, "error": error, "_returning": "id"},
        )
