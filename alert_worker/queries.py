"""Read-only queries for operators (``status``, ``poison list``, dry runs) and the metrics gauges.

Kept apart from ``DeliveryStore``, which owns every state change. Nothing here returns a payload:
operators see the masked recipient, never the raw one, the subject or the body.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

import psycopg

_STATUS_COLUMNS = (
    "id",
    "alert_id",
    "channel",
    "recipient",
    "status",
    "attempts",
    "deferrals",
    "next_attempt_at",
    "last_attempt_at",
    "delivered_at",
    "poison_at",
    "error_message",
    "provider_message_id",
    "delivered_via",
    "queue",
    "created_at",
    "updated_at",
)
_POISON_COLUMNS = ("id", "alert_id", "channel", "recipient", "attempts", "poison_at", "error_message", "replayable")


class ConnectionSource(Protocol):
    def connection(self) -> Any: ...


def _filters(channel: str | None, since: datetime | None) -> tuple[str, list[Any]]:
    sql, params = "", list[Any]()
    if channel:
        sql += " AND channel = %s"
        params.append(channel)
    if since is not None:
        sql += " AND poison_at >= %s"
        params.append(since)
    return sql, params


class OperatorQueries:
    """What ``alert-worker status`` and ``poison list`` show; one SELECT each."""

    def __init__(self, *, source: ConnectionSource) -> None:
        self._source = source

    def _fetch(self, sql: str, params: list[Any] | tuple[Any, ...]) -> list[tuple[Any, ...]]:
        conn: psycopg.Connection[Any]
        with self._source.connection() as conn:
            return list(conn.execute(sql, params).fetchall())

    def status(self, delivery_id: str) -> dict[str, Any] | None:
        """One delivery's state for an operator: never the payload."""
        rows = self._fetch(f"SELECT {', '.join(_STATUS_COLUMNS)} FROM alert_deliveries WHERE id = %s", (delivery_id,))
        return dict(zip(_STATUS_COLUMNS, rows[0], strict=True)) if rows else None

    def list_poison(
        self, *, channel: str | None = None, since: datetime | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Newest first. ``replayable`` is false when no payload was stored (resolve those instead)."""
        where, params = _filters(channel, since)
        rows = self._fetch(
            "SELECT id, alert_id, channel, recipient, attempts, poison_at, error_message, payload IS NOT NULL "
            f"FROM alert_deliveries WHERE status = 'poison'{where} ORDER BY poison_at DESC, id LIMIT %s",
            [*params, limit],
        )
        return [dict(zip(_POISON_COLUMNS, row, strict=True)) for row in rows]

    def replayable_ids(
        self, *, ids: list[str] | None = None, channel: str | None = None, since: datetime | None = None
    ) -> list[str]:
        """The poison rows a replay with these filters would move (what ``--dry-run`` prints)."""
        where, params = _filters(channel, since)
        if ids is not None:
            where += " AND id = ANY(%s)"
            params.append(ids)
        rows = self._fetch(
            f"SELECT id FROM alert_deliveries WHERE status = 'poison' AND payload IS NOT NULL{where} "
            "ORDER BY poison_at, id",
            params,
        )
        return [r[0] for r in rows]

    def statuses(self, ids: list[str]) -> dict[str, str]:
        """Current status per id (missing ids absent): explains why a replay or resolve skipped one."""
        rows = self._fetch("SELECT id, status FROM alert_deliveries WHERE id = ANY(%s)", (ids,))
        return {r[0]: r[1] for r in rows}

    def oldest_fresh_pending_epoch(self) -> int:
        """Creation time (epoch seconds) of the oldest pending delivery never attempted, deferred or
        poisoned; 0 when none. Rows waiting for a scheduled retry are excluded: their wait is planned."""
        rows = self._fetch(
            "SELECT COALESCE(EXTRACT(EPOCH FROM min(created_at))::bigint, 0) FROM alert_deliveries "
            "WHERE status = 'pending' AND attempts = 0 AND deferrals = 0 AND poison_at IS NULL",
            (),
        )
        return int(rows[0][0])
