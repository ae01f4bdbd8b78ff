"""The peers' minimal delivery: what a user would write for Dramatiq or Celery, for the bench's side by side.

Claim the row with one upsert, POST the alert on this thread's ``requests.Session``, mark the row delivered;
a stock ``psycopg_pool.ConnectionPool(max_size=16)`` per process. Run by ``dramatiq_app`` and ``celery_app``
inside the peers' own venv (``bench/requirements-peers.txt``); ``python -m bench.peers enqueue`` queues the
jobs there. Settings come from the environment ``bench.run`` gives the process: ``PEER_DATABASE_URL``,
``PEER_REDIS_URL`` (the broker), ``PEER_QUEUE``, ``PEER_WEBHOOK_URL``. Nothing here imports alert_worker.
"""

from __future__ import annotations

import os
import threading

import requests
from psycopg_pool import ConnectionPool

TABLE = """
CREATE TABLE IF NOT EXISTS peer_deliveries (
    id           text PRIMARY KEY,
    status       text NOT NULL,
    attempts     integer NOT NULL,
    delivered_at timestamptz NULL
)
"""
CLAIM = """
INSERT INTO peer_deliveries AS d (id, status, attempts) VALUES (%s, 'sending', 1)
ON CONFLICT (id) DO UPDATE SET status = 'sending', attempts = d.attempts + 1
WHERE d.status <> 'delivered'
RETURNING id
"""
MARK_DELIVERED = "UPDATE peer_deliveries SET status = 'delivered', delivered_at = now() WHERE id = %s"
POOL_SIZE = 16
SEND_TIMEOUT_SECONDS = 10

_pool: ConnectionPool | None = None
_pool_lock = threading.Lock()
_thread = threading.local()


def pool() -> ConnectionPool:
    """This process's pool, opened on first use (after any fork)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ConnectionPool(os.environ["PEER_DATABASE_URL"], max_size=POOL_SIZE, open=True)
        return _pool


def session() -> requests.Session:
    """This thread's HTTP session (keep-alive to the webhook)."""
    kept: requests.Session | None = getattr(_thread, "session", None)
    if kept is None:
        kept = _thread.session = requests.Session()
    return kept


def deliver(delivery_id: str, text: str) -> None:
    with pool().connection() as conn:
        if conn.execute(CLAIM, [delivery_id]).fetchone() is None:
            return  # delivered already
    response = session().post(os.environ["PEER_WEBHOOK_URL"], json={"text": text}, timeout=SEND_TIMEOUT_SECONDS)
    response.raise_for_status()
    with pool().connection() as conn:
        conn.execute(MARK_DELIVERED, [delivery_id])
