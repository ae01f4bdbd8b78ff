"""The suppression list: recipients a provider said can never receive, in ``alert_suppressions``.

Keyed by ``(channel, recipient_hash)``, the same keyed hash the executor stores on each delivery, so
an entry matches every later delivery to that recipient (and, with recipient normalization, every
spelling of it). Only the masked recipient is kept. A provider-added entry keeps its first reason;
operators add and remove entries from the CLI (``alert-worker suppression``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from alert_worker.delivery import recipient_identity
from alert_worker.models import ChannelType
from alert_worker.redaction import sanitize_text


class ConnectionSource(Protocol):
    def connection(self) -> Any: ...


@dataclass(frozen=True)
class Suppression:
    channel: str
    recipient: str  # masked
    reason: str
    source_delivery_id: str | None
    created_at: datetime
    recipient_hash: str = ""  # what ``suppression remove --hash`` takes

    def as_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "recipient": self.recipient,
            "recipient_hash": self.recipient_hash,
            "reason": self.reason,
            "source_delivery_id": self.source_delivery_id,
            "created_at": self.created_at.isoformat(),
        }


def suppression_key(secret: str, channel: str, recipient: str, *, default_webhook_url: str = "") -> tuple[str, str]:
    """(recipient_hash, masked recipient) of the normalized recipient, exactly as a delivery to it stores them.

    ``" Ops@Example.COM "`` and ``ops@example.com`` are one entry; for Slack, ``default`` (or empty) means
    ``SLACK_WEBHOOK_URL`` and a query string or fragment does not make another webhook (docs/contract.md §6.2).
    """
    return recipient_identity(secret, ChannelType(channel), recipient, default_webhook_url=default_webhook_url)


class SuppressionStore:
    """Postgres access for ``alert_suppressions``; one statement per call."""

    def __init__(self, *, source: ConnectionSource) -> None:
        self._source = source

    def reason(self, channel: str, rhash: str, *, operator_added_only: bool = False) -> str | None:
        """Why this recipient is suppressed, or ``None`` when it is not.

        ``operator_added_only``: ignore an entry a provider's answer added (``source_delivery_id`` set).
        """
        only = " AND source_delivery_id IS NULL" if operator_added_only else ""
        with self._source.connection() as conn:
            found = conn.execute(
                "SELECT reason FROM alert_suppressions WHERE channel = %s AND recipient_hash = %s" + only,
                (channel, rhash),
            ).fetchone()
        return None if found is None else str(found[0])

    def add(self, *, channel: str, rhash: str, masked: str, reason: str, source_delivery_id: str | None = None) -> bool:
        """Suppress a recipient; ``False`` when it already was (the first entry and its reason stay)."""
        with self._source.connection() as conn:
            created = conn.execute(
                """
                INSERT INTO alert_suppressions (channel, recipient_hash, recipient, reason, source_delivery_id)
                VALUES (%s, %s, %s, %s, %s)
                ON CONFLICT (channel, recipient_hash) DO NOTHING
                RETURNING 1
                """,
                (channel, rhash, masked, sanitize_text(reason), source_delivery_id),
            ).fetchone()
        return created is not None

    def remove(self, channel: str, rhash: str) -> bool:
        """Lift a suppression; ``False`` when there was none."""
        with self._source.connection() as conn:
            gone = conn.execute(
                "DELETE FROM alert_suppressions WHERE channel = %s AND recipient_hash = %s RETURNING 1",
                (channel, rhash),
            ).fetchone()
        return gone is not None

    def list(self, channel: str | None = None) -> list[Suppression]:
        """Newest first; never a raw recipient."""
        sql = (
            "SELECT channel, recipient, reason, source_delivery_id, created_at, recipient_hash"
            " FROM alert_suppressions"
        )
        params: tuple[str, ...] = ()
        if channel:
            sql += " WHERE channel = %s"
            params = (channel,)
        with self._source.connection() as conn:
            rows = conn.execute(sql + " ORDER BY created_at DESC, channel, recipient_hash", params).fetchall()
        return [Suppression(*row) for row in rows]

    def count(self) -> int:
        with self._source.connection() as conn:
            (n,) = conn.execute("SELECT count(*) FROM alert_suppressions").fetchone()
        return int(n)
