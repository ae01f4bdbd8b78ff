"""A delivery's row before any job runs: the schema, the recipient-hash secret, the producer's insert.

A mixin of ``DeliveryStore`` (as ``recovery.RecoveryStatements`` is), kept apart from the job's claim and
fenced writes so each module reads in one sitting.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from importlib import resources

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

_SECRET_KEY = "recipient_hash_secret"  # noqa: S105 - a key name, not a secret
_secret_cache: dict[str, str] = {}  # conninfo -> secret; plain data, shared by jobs of one process


@dataclass(frozen=True)
class NewDelivery:
    """What a producer or a job knows about a delivery before its row exists."""

    id: str
    channel: str
    recipient_masked: str
    recipient_hash: str
    payload: dict[str, str] | None
    queue: str = "alerts"
    alert_id: str | None = None
    dedup_key: str | None = None


class IntakeStatements:
    """Needs ``_pool`` from the class it is mixed into."""

    _pool: ConnectionPool

    # -- schema ----------------------------------------------------------------------------------
    def migrate(self) -> None:
        """Create or update the schema; safe to run from many workers at once."""
        sql = resources.files("alert_worker").joinpath("schema.sql").read_text()
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(sql)  # trusted file shipped with the package
            conn.execute(
                "INSERT INTO alert_worker_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                (_SECRET_KEY, secrets.token_hex(32)),
            )

    def recipient_hash_secret(self, configured: str = "") -> str:
        """The configured secret, else the one ``migrate`` generated and keeps in Postgres."""
        if configured:
            return configured
        key = str(self._pool.conninfo)
        if key not in _secret_cache:
            with self._pool.connection() as conn:
                found = conn.execute("SELECT value FROM alert_worker_meta WHERE key = %s", (_SECRET_KEY,)).fetchone()
            if found is None:
                raise RuntimeError("no recipient hash secret: run `alert-worker migrate` first")
            _secret_cache[key] = found[0]
        return _secret_cache[key]

    # -- producer side -----------------------------------------------------------------------------
    def create(self, new: NewDelivery) -> tuple[str, bool]:
        """Insert a pending row; an existing id or dedup key creates nothing and returns that row's id."""
        with self._pool.connection() as conn:
            created = conn.execute(
                """
                INSERT INTO alert_deliveries
                    (id, alert_id, channel, recipient, recipient_hash, dedup_key, payload, queue)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT DO NOTHING
                RETURNING id
                """,
                (
                    new.id,
                    new.alert_id,
                    new.channel,
                    new.recipient_masked,
                    new.recipient_hash,
                    new.dedup_key,
                    Jsonb(new.payload),
                    new.queue,
                ),
            ).fetchone()
        if created is not None:
            return created[0], True
        # lost a race with a delete when nothing is found; treat as created by someone else
        return self.existing_id(new.id, new.dedup_key) or new.id, False

    def existing_id(self, delivery_id: str | None, dedup_key: str | None) -> str | None:
        """The delivery a producer's id or dedup key already names (the id wins), if any."""
        if delivery_id is None and dedup_key is None:
            return None
        with self._pool.connection() as conn:
            found = conn.execute(
                "SELECT id FROM alert_deliveries WHERE id = %s OR (dedup_key IS NOT NULL AND dedup_key = %s) "
                "ORDER BY (id = %s) DESC LIMIT 1",
                (delivery_id, dedup_key, delivery_id),
            ).fetchone()
        return None if found is None else str(found[0])
