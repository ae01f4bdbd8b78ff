"""Settings for running beyond one machine: a pooler in front of Postgres, Redis found through Sentinel.

Parsed with the other settings at start-up and checked together, so a half-configured Sentinel or an
unknown pooler stops the worker with one clear line (docs/scaling.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alert_worker.errors import ConfigurationError
from alert_worker.redaction import password_misread


def _text(env: Mapping[str, str], name: str) -> str:
    return (env.get(name) or "").strip()


def connection_url(env: Mapping[str, str], name: str, *, authority_ends: str, first_at: bool) -> str:
    """A DSN its driver reads as written: a password holding an unescaped '/', '?', '#' or '@' is refused.

    Read otherwise, a piece of the password would become a host or a port, and the driver's error would
    quote it (docs/contract.md §7.6). The message names the variable, never its value.
    """
    url = _text(env, name)
    if password_misread(url, authority_ends=authority_ends, first_at=first_at):
        raise ConfigurationError(
            f"{name}: its password holds an unescaped '/', '?', '#' or '@' (or an '@' follows the host): "
            "percent-encode them (%2F, %3F, %23, %40)"
        )
    return url


def parse_sentinels(raw: str) -> tuple[tuple[str, int], ...]:
    """``"10.0.0.1:26379,sentinel-2:26379"`` -> ``(("10.0.0.1", 26379), ("sentinel-2", 26379))``."""
    found: list[tuple[str, int]] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        host, _, port = part.rpartition(":")
        if not host or not port.isdecimal() or not 0 < int(port) <= 65535:
            raise ConfigurationError(f"REDIS_SENTINELS must list host:port pairs, got {part!r}")
        found.append((host.strip("[]"), int(port)))
    return tuple(found)


def cluster_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """ALERT_DB_POOLER, REDIS_SENTINELS and REDIS_SENTINEL_MASTER, checked together (docs/scaling.md)."""
    pooler = _text(env, "ALERT_DB_POOLER").lower()
    pooler = "" if pooler == "none" else pooler
    if pooler not in ("", "pgbouncer"):
        raise ConfigurationError(f"ALERT_DB_POOLER must be 'pgbouncer' or 'none', got {pooler!r}")
    sentinels = parse_sentinels(_text(env, "REDIS_SENTINELS"))
    master = _text(env, "REDIS_SENTINEL_MASTER")
    if bool(sentinels) != bool(master):
        raise ConfigurationError("REDIS_SENTINELS and REDIS_SENTINEL_MASTER must be set together")
    redis_url = _text(env, "REDIS_URL")
    scheme = redis_url.split("://", 1)[0].lower() if "://" in redis_url else ""
    if redis_url and scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError("REDIS_URL must start with redis://, rediss:// or unix://")
    if sentinels and scheme == "unix":
        raise ConfigurationError("REDIS_SENTINELS needs a redis:// or rediss:// REDIS_URL, not unix://")
    return {"db_pooler": pooler, "redis_sentinels": sentinels, "redis_sentinel_master": master}
