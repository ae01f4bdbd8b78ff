"""How the package opens a Postgres connection or a Redis client, whatever stands in front of them.

Every connection the package opens (job pools, the process pool, the sweep, operator commands, the
worker's start-up checks) takes its psycopg keyword arguments from ``postgres_kwargs`` and every Redis
client (workers, scheduler, producer, CLI, sweep lock) comes from ``redis_client``, so one setting
changes all of them:

- ``ALERT_DB_POOLER=pgbouncer``: PgBouncer in transaction mode before 1.21 cannot keep a prepared
  statement across transactions (the next one may run on another server connection), so psycopg's
  automatic preparation is switched off (``prepare_threshold=None``).
- ``REDIS_SENTINELS`` + ``REDIS_SENTINEL_MASTER``: the client asks Sentinel for the primary on every
  new connection (``Sentinel.master_for``), so after a failover the next connection goes to the new
  primary. ``REDIS_URL`` then gives only the scheme (``rediss://`` for TLS), credentials and db; its
  host is not used. The sentinels are spoken to with the same timeouts and TLS options.
- ``rediss://``: TLS, with redis-py's URL options (``?ssl_ca_certs=/path``, ``?ssl_cert_reqs=none``).
"""

from __future__ import annotations

import math
from typing import Any

import psycopg
import redis
from psycopg.conninfo import conninfo_to_dict
from redis.connection import SSLConnection, parse_url
from redis.sentinel import Sentinel

from alert_worker.errors import ConfigurationError
from alert_worker.settings import Settings

DB_CONNECT_TIMEOUT_SECONDS = 5
KEEPALIVE_INTERVAL_SECONDS = 2
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT_MARGIN_SECONDS = 5
REDIS_SCHEMES = ("redis", "rediss", "unix")
# What a URL may set that a Sentinel-managed connection must not take from it: the primary's address
# comes from Sentinel, and its connection class is chosen by ``ssl``.
_SENTINEL_DROPPED = ("host", "port", "path", "connection_class")


def silent_network_kwargs(settings: Settings) -> dict[str, Any]:
    """libpq TCP keepalives and ``tcp_user_timeout``: a call on a silent peer fails (docs/contract.md §7.3).

    A job timeout cannot interrupt psycopg while it waits in C on a socket, and ``statement_timeout`` is
    enforced by the server, so on a partition (no RST, no answer) only the kernel can end the wait. With
    ``S`` the send timeout rounded up: data unacknowledged for ``S + 5`` s (``tcp_user_timeout``) fails
    the call; a call waiting for a reply probes after ``S`` s of silence, every 2 s, and the user timeout
    ends it at ``S + 6`` s at the latest. Both stay within ``S + 10`` s. A slow query is not cut: the
    server's kernel answers the probes. A parameter ``DATABASE_URL`` sets itself is kept as given.
    """
    send = max(1, math.ceil(settings.send_timeout_seconds))
    wanted: dict[str, Any] = {
        "keepalives": 1,
        "keepalives_idle": send,
        "keepalives_interval": KEEPALIVE_INTERVAL_SECONDS,
        "keepalives_count": KEEPALIVE_COUNT,
        "tcp_user_timeout": (send + TCP_USER_TIMEOUT_MARGIN_SECONDS) * 1000,
    }
    given = _url_parameters(settings.database_url)
    return {key: value for key, value in wanted.items() if key not in given}


def _url_parameters(database_url: str) -> set[str]:
    """The libpq parameters a DSN (URL or ``key=value``) sets; none when libpq cannot parse it."""
    try:
        return set(conninfo_to_dict(database_url))
    except psycopg.Error:  # the connect reports it, without this function echoing the DSN
        return set()


def postgres_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for every psycopg connection the package opens (pools and plain connects)."""
    kwargs: dict[str, Any] = {"connect_timeout": DB_CONNECT_TIMEOUT_SECONDS, "autocommit": True}
    kwargs.update(silent_network_kwargs(settings))
    if settings.db_pooler == "pgbouncer":
        kwargs["prepare_threshold"] = None  # transaction pooling before PgBouncer 1.21: no prepared statements
    return kwargs


def bounded_postgres_kwargs(settings: Settings, bound_ms: int) -> dict[str, Any]:
    """Connection kwargs with statement and lock timeouts, so no query blocks a thread forever.

    PgBouncer 1.18 refuses start-up ``options``: behind it the timeouts are set on the database role
    instead (``ALTER ROLE … SET statement_timeout``, docs/scaling.md).
    """
    kwargs = postgres_kwargs(settings)
    if settings.db_pooler != "pgbouncer":
        kwargs["options"] = f"-c statement_timeout={bound_ms} -c lock_timeout={bound_ms}"
    return kwargs


def redis_timeout(settings: Settings) -> float:
    """One bound for every Redis socket operation: connect and each reply."""
    return max(settings.send_timeout_seconds, 1.0)


def _url_kwargs(url: str) -> dict[str, Any]:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in REDIS_SCHEMES:
        raise ConfigurationError("REDIS_URL must start with redis://, rediss:// or unix://")
    try:
        return dict(parse_url(url))  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ConfigurationError(f"REDIS_URL is not a valid Redis URL: {exc}") from None


def _common_kwargs(settings: Settings) -> dict[str, Any]:
    """RESP2 and no ``CLIENT SETINFO``: one handshake round trip (``SELECT``) instead of five."""
    timeout = redis_timeout(settings)
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout, "protocol": 2, "driver_info": None}


def sentinel_for(settings: Settings) -> Sentinel:
    """A ``Sentinel`` over ``REDIS_SENTINELS``, talking to sentinels with the URL's TLS options."""
    url = _url_kwargs(settings.redis_url)
    tls = url.get("connection_class") is SSLConnection
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": redis_timeout(settings),
        "socket_connect_timeout": redis_timeout(settings),
    }
    if tls:
        sentinel_kwargs["ssl"] = True
        sentinel_kwargs.update({k: v for k, v in url.items() if k.startswith("ssl_")})
    return Sentinel(list(settings.redis_sentinels), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]


def redis_client(settings: Settings) -> redis.Redis:
    """The Redis client for ``settings``: through Sentinel when sentinels are set, else from the URL.

    redis-py retries a command once the connection is found broken, reconnecting (its default
    ``Retry``); through Sentinel the reconnect asks for the current primary, so a long-lived client
    (a worker's, the scheduler's) follows a failover.
    """
    if not settings.redis_sentinels:
        return redis.Redis.from_url(settings.redis_url, **_common_kwargs(settings))
    url = _url_kwargs(settings.redis_url)
    tls = url.pop("connection_class", None) is SSLConnection
    for key in _SENTINEL_DROPPED:
        url.pop(key, None)
    client: redis.Redis = sentinel_for(settings).master_for(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_master,
        redis_class=redis.Redis,
        ssl=tls,
        **{**url, **_common_kwargs(settings)},
    )
    return client
