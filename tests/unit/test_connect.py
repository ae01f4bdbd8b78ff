"""How settings choose the Postgres and Redis connections (alert_worker/connect.py); no server needed."""

from __future__ import annotations

import pytest
from redis.connection import SSLConnection
from redis.sentinel import SentinelConnectionPool, SentinelManagedConnection, SentinelManagedSSLConnection

from alert_worker.connect import postgres_kwargs, redis_client
from alert_worker.errors import ConfigurationError
from alert_worker.settings import Settings

BASE = {"DATABASE_URL": "postgresql://postgres@127.0.0.1/x", "REDIS_URL": "redis://127.0.0.1:6379/3"}


def settings(**env: str) -> Settings:
    return Settings.from_env({**BASE, **env})


def test_pgbouncer_turns_off_prepared_statements() -> None:
    """ALERT_DB_POOLER=pgbouncer: psycopg never prepares (transaction pooling before PgBouncer 1.21)."""
    kwargs = postgres_kwargs(settings(ALERT_DB_POOLER="pgbouncer"))
    assert "prepare_threshold" in kwargs and kwargs["prepare_threshold"] is None


@pytest.mark.parametrize("value", ["", "none", "NONE"], ids=["unset", "none", "upper-none"])
def test_without_a_pooler_psycopg_keeps_its_default_preparation(value: str) -> None:
    """No pooler: psycopg's own prepare_threshold default stays in force."""
    kwargs = postgres_kwargs(settings(ALERT_DB_POOLER=value))
    assert "prepare_threshold" not in kwargs
    assert kwargs["autocommit"] is True and kwargs["connect_timeout"] > 0


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ALERT_DB_POOLER": "pgpool"}, "ALERT_DB_POOLER"),
        ({"REDIS_SENTINELS": "127.0.0.1:26379"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINEL_MASTER": "alerts"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "127.0.0.1", "REDIS_SENTINEL_MASTER": "m"}, "host:port"),
        ({"REDIS_SENTINELS": "h:0", "REDIS_SENTINEL_MASTER": "m"}, "host:port"),
        ({"REDIS_SENTINELS": "h:70000", "REDIS_SENTINEL_MASTER": "m"}, "host:port"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "rediss://"),
        ({"REDIS_URL": "unix:///tmp/r.sock", "REDIS_SENTINELS": "h:1", "REDIS_SENTINEL_MASTER": "m"}, "unix://"),
    ],
    ids=[
        "unknown-pooler",
        "sentinels-without-master",
        "master-without-sentinels",
        "sentinel-without-port",
        "sentinel-port-zero",
        "sentinel-port-too-big",
        "not-a-redis-scheme",
        "sentinel-with-unix-socket",
    ],
)
def test_a_bad_cluster_setting_fails_at_start_up_naming_it(env: dict[str, str], named: str) -> None:
    """Settings.from_env refuses an unusable pooler, Sentinel or URL setting with a message naming it."""
    with pytest.raises(ConfigurationError, match=named.replace("+", r"\+")):
        settings(**env)


def test_sentinels_are_parsed_in_order_including_ipv6() -> None:
    """REDIS_SENTINELS keeps its order; an IPv6 host may be bracketed."""
    found = settings(REDIS_SENTINELS=" 10.1.1.1:26379, [::1]:26380 ,s3:1", REDIS_SENTINEL_MASTER="alerts")
    assert found.redis_sentinels == (("10.1.1.1", 26379), ("::1", 26380), ("s3", 1))


def test_a_plain_url_gives_a_bounded_resp2_client() -> None:
    """Without Sentinel the client comes from REDIS_URL, with both socket timeouts set."""
    client = redis_client(settings(ALERT_SEND_TIMEOUT_SECONDS="3"))
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 6379, 3)
    assert kwargs["socket_timeout"] == 3 and kwargs["socket_connect_timeout"] == 3
    assert kwargs["protocol"] == 2


def test_a_rediss_url_gives_a_tls_client_with_its_options() -> None:
    """rediss:// selects TLS and keeps redis-py's URL TLS options (CA file, verification)."""
    client = redis_client(
        settings(REDIS_URL="rediss://:pw@127.0.0.1:6380/2?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required")
    )
    pool = client.connection_pool
    assert pool.connection_class is SSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"
    assert pool.connection_kwargs["password"] == "pw"


def test_sentinel_settings_give_a_sentinel_managed_client_with_the_urls_db_and_password() -> None:
    """With sentinels, the client finds the primary through Sentinel; REDIS_URL gives db and credentials only."""
    client = redis_client(
        settings(
            REDIS_URL="redis://:secret@ignored-host:1/5",
            REDIS_SENTINELS="127.0.0.1:26379,127.0.0.1:26380",
            REDIS_SENTINEL_MASTER="alerts",
            ALERT_SEND_TIMEOUT_SECONDS="2",
        )
    )
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "alerts" and pool.connection_class is SentinelManagedConnection
    kwargs = pool.connection_kwargs
    assert kwargs["db"] == 5 and kwargs["password"] == "secret"
    assert "host" not in kwargs and "port" not in kwargs
    assert kwargs["socket_timeout"] == 2
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
    assert all(s.connection_pool.connection_kwargs["socket_timeout"] == 2 for s in sentinels)


def test_sentinel_with_rediss_uses_tls_to_the_primary_and_to_the_sentinels() -> None:
    """rediss:// with Sentinel: TLS to the primary and to every sentinel, same CA options."""
    client = redis_client(
        settings(
            REDIS_URL="rediss://127.0.0.1/0?ssl_ca_certs=/ca.pem",
            REDIS_SENTINELS="127.0.0.1:26379",
            REDIS_SENTINEL_MASTER="alerts",
        )
    )
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.connection_class is SentinelManagedSSLConnection
    sentinel = pool.sentinel_manager.sentinels[0]
    assert sentinel.connection_pool.connection_class is SSLConnection
    assert sentinel.connection_pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"


@pytest.mark.parametrize("send_timeout", ["0.1", "2", "10", "29.5"], ids=["tiny", "two", "default", "fractional"])
def test_every_postgres_connection_fails_on_a_silent_peer_within_the_send_timeout_plus_ten_seconds(
    send_timeout: str,
) -> None:
    """docs/contract.md §7.3. Unacknowledged data ends at tcp_user_timeout; a call waiting for a reply sends
    its first probe after keepalives_idle and is ended at the first probe tick past tcp_user_timeout."""
    kwargs = postgres_kwargs(settings(ALERT_SEND_TIMEOUT_SECONDS=send_timeout))
    bound = float(send_timeout) + 10
    assert kwargs["keepalives"] == 1
    user_timeout = kwargs["tcp_user_timeout"] / 1000
    idle, interval = kwargs["keepalives_idle"], kwargs["keepalives_interval"]
    assert float(send_timeout) < user_timeout <= bound, "no slower than the bound, never before the send timeout"
    ticks = [idle + k * interval for k in range(1, 100)]
    waiting_for_a_reply = next(t for t in ticks if t >= user_timeout)
    assert waiting_for_a_reply <= bound
    assert idle + kwargs["keepalives_count"] * interval <= bound, "even were tcp_user_timeout ignored"


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        (
            "postgresql://postgres@127.0.0.1/x?keepalives_idle=30&tcp_user_timeout=0",
            {"keepalives_idle", "tcp_user_timeout"},
        ),
        ("host=127.0.0.1 dbname=x keepalives=0", {"keepalives"}),
        ("postgresql://postgres@127.0.0.1/x", set()),
    ],
    ids=["url-query", "key-value-dsn", "none-given"],
)
def test_keepalive_parameters_the_database_url_sets_are_kept_as_given(url: str, kept: set[str]) -> None:
    """psycopg lets keyword arguments override the DSN, so the package passes only what the DSN leaves out."""
    kwargs = postgres_kwargs(settings(DATABASE_URL=url))
    names = {"keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout"}
    assert set(kwargs) & names == names - kept


def test_a_dsn_libpq_cannot_parse_gets_every_parameter_and_is_not_echoed() -> None:
    """The connect reports the bad DSN (with its password redacted); deriving the options never raises."""
    kwargs = postgres_kwargs(settings(DATABASE_URL="postgresql://u:secret@h/x?nonsense=1"))
    assert kwargs["tcp_user_timeout"] > 0
