"""Attempts whose outcome is unknown (``alert_unknown_outcomes``): sent, but no answer came.

The executor records when such an attempt began (database clock). Before the next SMS attempt it asks
Twilio for a message created in that attempt's window (docs/contract.md §7.1); Postgres keeps that time
across workers, restarts and replays. The latest unknown attempt is kept: an attempt is made only after
the look-up for the one before found nothing, so the latest is the one whose message may exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol


class ConnectionSource(Protocol):
    def connection(self) -> Any: ...


class UnknownOutcomes:
    """Postgres access for ``alert_unknown_outcomes``."""

    def __init__(self, *, source: ConnectionSource) -> None:
        self._source = source

    def record(self, delivery_id: str, channel: str, started_at: datetime | None) -> None:
        """Remember an unknown attempt; ``started_at`` None means "now" by the database clock."""
        with self._source.connection() as conn:
            conn.execute(
                """
                INSERT INTO alert_unknown_outcomes (delivery_id, channel, attempt_started_at)
                VALUES (%s, %s, COALESCE(%s, now()))
                ON CONFLICT (delivery_id) DO UPDATE
                   SET attempt_started_at = GREATEST(alert_unknown_outcomes.attempt_started_at,
                                                     EXCLUDED.attempt_started_at)
                """,
                (delivery_id, channel, started_at),
            )

    def since(self, delivery_id: str) -> datetime | None:
        """When the latest unknown attempt of this delivery began, if there was one."""
        with self._source.connection() as conn:
            found = conn.execute(
                "SELECT attempt_started_at FROM alert_unknown_outcomes WHERE delivery_id = %s", (delivery_id,)
            ).fetchone()
        return None if found is None else found[0]

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

    def rival_in_flight(self, delivery_id: str) -> bool:
        """Another open delivery of the same text to the same recipient that may have sent it: one claimed
        now (its answer not yet recorded) or one with an unknown outcome of its own. Then a single listed
        message cannot be told apart as ours."""
        with self._source.connection() as conn:
            found = conn.execute(
                """
                SELECT EXISTS (
                    SELECT 1 FROM alert_deliveries me JOIN alert_deliveries o
                      ON o.channel = me.channel AND o.recipient_hash = me.recipient_hash AND o.id <> me.id
                     WHERE me.id = %s
                       AND o.status IN ('pending', 'in_progress')
                       AND o.payload->'subject' IS NOT DISTINCT FROM me.payload->'subject'
                       AND o.payload->'body' IS NOT DISTINCT FROM me.payload->'body'
                       AND (o.status = 'in_progress'
                            OR EXISTS (SELECT 1 FROM alert_unknown_outcomes u WHERE u.delivery_id = o.id)))
                """,
                (delivery_id,),
            ).fetchone()
        return bool(found and found[0])
