"""What the operator commands share: printing to the console, the command error, and their connections.

Output helpers never print a raw recipient, body or secret: callers pass masked rows and sanitized errors.
Text from a delivery goes through ``show`` (or ``print_json``, ASCII-only JSON), so an id or an error holding
terminal escapes prints as ``\\x1b[...``, never as the escape itself.
Connections are checked with one direct Postgres connection first, so a command fails at once with the
reason instead of a pool timeout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from psycopg_pool import ConnectionPool

from alert_worker.redaction import escape_controls
from alert_worker.resources import Connections, open_job_pool, short_lived
from alert_worker.settings import Settings


class CommandFailed(Exception):
    """Print the message on stderr and exit 1."""


def out(text: str = "") -> None:
    print(text, flush=True)


def err(text: str) -> None:
    print(f"alert-worker: {text}", file=sys.stderr, flush=True)


def print_json(value: Any) -> None:
    """JSON as ``json`` writes it (ASCII only): every control character is already a ``\\u`` escape."""
    out(json.dumps(value, default=jsonable, sort_keys=True))


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def show(value: Any) -> str:
    """One value for a table or a ``label: value`` line, control characters escaped."""
    if value is None:
        return "-"
    return value.isoformat() if isinstance(value, datetime) else escape_controls(str(value))


def table(
    headers: tuple[str, ...], rows: Sequence[tuple[str, ...]], *, right: frozenset[int] = frozenset()
) -> list[str]:
    """Aligned columns sized to their widest cell; the last column is never padded (free text)."""
    widths = [max([len(headers[i])] + [len(r[i]) for r in rows]) for i in range(len(headers) - 1)]

    def line(cells: tuple[str, ...]) -> str:
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=False))]
        return "  ".join([*padded, cells[-1]]).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def reachable_database(settings: Settings) -> None:
    """One direct connection first: a pool would retry in the background and only say "timeout"."""
    from alert_worker.health import StartupError, check_database

    if not settings.database_url:
        raise CommandFailed("DATABASE_URL is not set")
    try:
        check_database(settings)
    except StartupError as exc:
        raise CommandFailed(f"database unreachable: {exc}") from exc


@contextmanager
def database_pool(settings: Settings) -> Iterator[ConnectionPool]:
    reachable_database(settings)
    database = open_job_pool(settings)
    try:
        yield database
    finally:
        database.close()


@contextmanager
def connections(settings: Settings) -> Iterator[Connections]:
    require_connection_settings_or_fail(settings)
    reachable_database(settings)
    with short_lived(settings) as conns:
        yield conns


def require_connection_settings_or_fail(settings: Settings) -> None:
    from alert_worker.health import StartupError, require_connection_settings

    try:
        require_connection_settings(settings)
    except StartupError as exc:
        raise CommandFailed(str(exc)) from exc
