"""Attempts whose outcome is unknown (``alert_unknown_outcomes``): sent, but no answer came.

The executor records when such an attempt began (database clock). Before the next SMS attempt it asks
Twilio for a message created in that attempt's window (docs/contract.md §7.1); Postgres keeps that time
across workers, restarts and replays. The latest unknown attempt is kept: an attempt is made only after
the look-up for the one before found nothing, so the latest is the one whose message may exist.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol


def text_sha256(text: str) -> str:
    """The hex SHA-256 of a sent text, as ``alert_unknown_outcomes.sent_sha256`` keeps it."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class ConnectionSource(Protocol):
    def connection(self) -> Any: ...


class UnknownOutcomes:
    """Postgres access for ``alert_unknown_outcomes``."""

    def __init__(self, *, source: ConnectionSource) -> None:
        self._source = source

    def record(
        self, delivery_id: str, channel: str, started_at: datetime | None, *, sent_sha256: str | None = None
    ) -> None:
        """Remember an unknown attempt; ``started_at`` None means "now" by the database clock.

        ``sent_sha256``: the SHA-256 of the text sent when it was not the delivery's own (a message carrying
        held alerts, §8), so the look-up compares what was really sent; None: its own text."""
        with self._source.connection() as conn:
            conn.execute(
                """
                INSERT INTO alert_unknown_outcomes (delivery_id, channel, attempt_started_at, sent_sha256)
                VALUES (%s, %s, COALESCE(%s, now()), %s)
                ON CONFLICT (delivery_id) DO UPDATE
                   SET attempt_started_at = GREATEST(alert_unknown_outcomes.attempt_started_at,
                                                     EXCLUDED.attempt_started_at),
                       sent_sha256 = CASE WHEN EXCLUDED.attempt_started_at >= alert_unknown_outcomes.attempt_started_at
                                          THEN EXCLUDED.sent_sha256 ELSE alert_unknown_outcomes.sent_sha256 END,
                       carried_by = CASE WHEN EXCLUDED.attempt_started_at >= alert_unknown_outcomes.attempt_started_at
                                         THEN NULL ELSE alert_unknown_outcomes.carried_by END
                """,
                (delivery_id, channel, started_at, sent_sha256),
            )

    def since(self, delivery_id: str) -> datetime | None:
        """When the latest unknown attempt of this delivery began, if there was one."""
        found = self.attempt(delivery_id)
        return None if found is None else found[0]

    def attempt(self, delivery_id: str) -> tuple[datetime, str | None, str | None] | None:
        """When the latest unknown attempt began, the SHA-256 of its text if it was not its own, and the
        carrier whose message it was if this delivery was carried (``carried_by``, §8)."""
        with self._source.connection() as conn:
            found = conn.execute(
                "SELECT attempt_started_at, sent_sha256, carried_by FROM alert_unknown_outcomes WHERE delivery_id = %s",
                (delivery_id,),
            ).fetchone()
        return None if found is None else (found[0], found[1], found[2])

    def clear(self, delivery_id: str) -> None:
        with self._source.connection() as conn:
            conn.execute("DELETE FROM alert_unknown_outcomes WHERE delivery_id = %s", (delivery_id,))

    def taken(self, delivery_id: str, message_ids: Iterable[str]) -> set[str]:
        """Which of ``message_ids`` another delivery holds as its ``provider_message_id``."""
        ids = list(message_ids)
        if not ids:
            return set()
        with self._source.connection() as conn:
            rows = conn.execute(
                "SELECT provider_message_id FROM alert_deliveries WHERE provider_message_id = ANY(%s) AND id <> %s",
                (ids, delivery_id),
            ).fetchall()
        return {row[0] for row in rows}

    def rivals(self, delivery_id: str, *, earliest: datetime, latest: datetime) -> list[dict[str, Any] | None]:
        """Payloads of the other deliveries to the same recipient on the same channel that may own a message
        created in [earliest, latest] without our knowing its id (§7.1: when in doubt, send again):

        - any not yet ended (``pending`` or ``in_progress``): claimed now, waiting for a retry after an
          acceptance it could not record (its sent marker holds the id), or not yet sent;
        - any ended with no ``provider_message_id`` whose life overlaps the window (an id refused as
          another's, an answer without one, a delivery poisoned after its message went out).

        ``None`` for a row whose payload is gone (delivered or resolved): its text is unknown.
        """
        with self._source.connection() as conn:
            rows = conn.execute(
                """
                SELECT o.payload FROM alert_deliveries me JOIN alert_deliveries o
                  ON o.channel = me.channel AND o.recipient_hash = me.recipient_hash AND o.id <> me.id
                 WHERE me.id = %(id)s
                   AND (o.status IN ('pending', 'in_progress')
                        OR (o.provider_message_id IS NULL
                            AND o.created_at <= %(latest)s
                            AND COALESCE(o.delivered_at, o.poison_at, o.updated_at) >= %(earliest)s))
                """,
                {"id": delivery_id, "earliest": earliest, "latest": latest},
            ).fetchall()
        return [row[0] if isinstance(row[0], dict) else None for row in rows]
