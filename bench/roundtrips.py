"""Count what one delivery costs in round trips: Postgres connections and statements, Redis commands.

``python -m bench.roundtrips`` runs deliveries in-process (no RQ) against a throwaway database, a locked
Redis db and a loopback SMTP sink, with counting wrappers around psycopg and redis-py, and prints the
per-delivery counts for the job and process scopes and for the skip path (an already delivered id).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import redis.connection

from bench.services import locked_redis_db, running_sink, throwaway_database

Counts = Counter[str]


@contextmanager
def counting() -> Iterator[Counts]:
    """Patch psycopg and redis-py to count connections, statements, commands and socket writes."""
    counts: Counts = Counter()
    cursor_execute = psycopg.Cursor.execute
    connect = psycopg.Connection.connect
    conn_class = redis.connection.AbstractConnection
    send_command, pack_commands, send_packed = (
        conn_class.send_command,
        conn_class.pack_commands,
        conn_class.send_packed_command,
    )
    redis_connect = conn_class.on_connect_check_health

    def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        text = str(query).split(None, 1)[0].upper() if str(query).strip() else "(empty check)"
        counts["pg statements"] += 1
        counts[f"pg {text}"] += 1
        return cursor_execute(self, query, *args, **kwargs)

    def connect_(cls: Any, *args: Any, **kwargs: Any) -> Any:
        counts["pg connections"] += 1
        return connect.__func__(cls, *args, **kwargs)  # type: ignore[attr-defined]

    def one(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["redis commands"] += 1
        counts[f"redis {args[0]}"] += 1
        return send_command(self, *args, **kwargs)

    def pack_many(self: Any, commands: Any) -> Any:
        for cmd in commands:
            counts["redis commands"] += 1
            counts[f"redis {cmd[0]}"] += 1
        return pack_commands(self, commands)

    def send(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["redis round trips"] += 1
        return send_packed(self, *args, **kwargs)

    def redis_connect_(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["redis connections"] += 1
        return redis_connect(self, *args, **kwargs)

    psycopg.Cursor.execute = execute  # type: ignore[method-assign]
    psycopg.Connection.connect = classmethod(connect_)  # type: ignore[method-assign,assignment]
    conn_class.send_command = one  # type: ignore[method-assign]
    conn_class.pack_commands = pack_many  # type: ignore[method-assign]
    conn_class.send_packed_command = send  # type: ignore[method-assign]
    conn_class.on_connect_check_health = redis_connect_  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        psycopg.Cursor.execute = cursor_execute  # type: ignore[method-assign]
        psycopg.Connection.connect = connect  # type: ignore[method-assign]
        conn_class.send_command = send_command  # type: ignore[method-assign]
        conn_class.pack_commands = pack_commands  # type: ignore[method-assign]
        conn_class.send_packed_command = send_packed  # type: ignore[method-assign]
        conn_class.on_connect_check_health = redis_connect  # type: ignore[method-assign]


def per_delivery(run: Callable[[str], object], ids: list[str]) -> dict[str, float]:
    """Average counts over ``ids`` (each delivered by ``run``), after one untimed warm-up."""
    run(ids[0])
    with counting() as counts:
        for delivery_id in ids[1:]:
            run(delivery_id)
    return {key: n / (len(ids) - 1) for key, n in sorted(counts.items())}


def main() -> int:
    from alert_worker.entrypoint import execute_delivery_job
    from alert_worker.resources import close_process_resources

    n = 21
    with throwaway_database() as database_url, locked_redis_db() as redis_url, running_sink() as sink:
        os.environ.update(
            {
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_url,
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(sink.port),
                "SMTP_SECURITY": "none",
                "ALERTS_FROM_EMAIL": "alerts@example.org",
                "ALERT_RECIPIENT_HASH_SECRET": "bench-secret",
                "ALERT_LOG_FORMAT": "json",
            }
        )
        for name in ("EMAIL_PER_MIN", "EMAIL_PER_RECIPIENT_HOUR", "GLOBAL_PER_MIN"):
            os.environ[f"ALERT_RATE_{name}"] = "0"

        def deliver(delivery_id: str) -> object:
            return execute_delivery_job(delivery_id, "email", "ops@example.org", delivery_id, "body")

        report: dict[str, dict[str, float]] = {}
        for scope in ("job", "process"):
            os.environ["ALERT_RESOURCE_SCOPE"] = scope
            ids = [f"rt-{scope}-{i}" for i in range(n)]
            report[f"{scope} scope, delivered"] = per_delivery(deliver, ids)
            report[f"{scope} scope, skipped (already delivered)"] = per_delivery(deliver, ids)
            close_process_resources()
        os.environ["ALERT_RATE_EMAIL_PER_MIN"] = "1000000"
        os.environ["ALERT_RESOURCE_SCOPE"] = "job"
        report["job scope, delivered, rate limits on"] = per_delivery(deliver, [f"rt-rl-{i}" for i in range(n)])
    for title, counts in report.items():  # the job's own JSON log lines precede this; `grep -v '^{'`
        print(f"{title}:")
        for key, value in counts.items():
            print(f"  {key:32s} {value:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
