"""Attempts whose outcome is unknown (``alert_unknown_outcomes``): sent, but no answer came.

The executor records when such an attempt began (database clock). Before the next SMS attempt it asks
Twilio for the message sent since then; Postgres keeps that time across workers and restarts. The
earliest unknown attempt is kept: a second timeout must not narrow the look-up window.
"""

from __future__ import annotations

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
                   SET attempt_started_at = LEAST(alert_unknown_outcomes.attempt_started_at,
                                                  EXCLUDED.attempt_started_at)
                """,
                (delivery_id, channel, started_at),
            )

    def since(self, delivery_id: str) -> datetime | None:
        """When the earliest unknown attempt of this delivery began, if there was one."""
        with self._source.connection() as conn:
            found = conn.execute(
                "SELECT attempt_started_at FROM alert_unknown_outcomes WHERE delivery_id = %s", (delivery_id,)
            ).fetchone()
        return None if found is None else found[0]

    def clear(self, delivery_id: str) -> None:
        with self._source.connection() as conn:
            conn.execute("DELETE FROM alert_unknown_outcomes WHERE delivery_id = %s", (delivery_id,))
