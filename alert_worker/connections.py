"""Short-lived connections for operator commands and the worker's sweeper thread.

The CLI and the sweeper open one plain Postgres connection and one Redis client, use them, and close
them. No pool and no background threads: the sweeper runs inside a process that forks a work-horse for
every job, and a pool (with its lock and worker threads) must not be held across ``fork()`` (FACTS.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import psycopg
import redis
from psycopg_pool import ConnectionPool

from alert_worker.settings import Settings
from alert_worker.store import DeliveryStore

CONNECT_TIMEOUT_SECONDS = 5


class OneConnection:
    """Just enough of ``ConnectionPool`` for ``DeliveryStore``: one autocommit connection, no threads."""

    def __init__(self, conninfo: str, *, connect_timeout: int = CONNECT_TIMEOUT_SECONDS) -> None:
        self.conninfo = conninfo
        self._conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=connect_timeout)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        yield self._conn

    def close(self) -> None:
        self._conn.close()


def open_redis(settings: Settings) -> redis.Redis:
    timeout = max(settings.send_timeout_seconds, 1.0)
    return redis.Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)


def store_on(database: OneConnection, *, stuck_after_seconds: int = 900) -> DeliveryStore:
    """A ``DeliveryStore`` on one plain connection (it only needs ``connection()`` and ``conninfo``)."""
    return DeliveryStore(pool=cast(ConnectionPool, database), stuck_after_seconds=stuck_after_seconds)


@dataclass
class Connections:
    store: DeliveryStore
    database: OneConnection
    redis: redis.Redis


@contextmanager
def short_lived(settings: Settings) -> Iterator[Connections]:
    """One Postgres connection and one Redis client for one command or one sweep pass, closed after."""
    database = OneConnection(settings.database_url)
    try:
        client = open_redis(settings)
        try:
            store = store_on(database, stuck_after_seconds=settings.stuck_after_seconds)
            yield Connections(store=store, database=database, redis=client)
        finally:
            client.close()
    finally:
        database.close()
