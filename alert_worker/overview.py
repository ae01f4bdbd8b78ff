"""The operator's overview (``alert-worker status`` with no id, docs/contract.md §6.4): collect it, render it.

Answers in well under a second at millions of rows. Every Postgres read is an index probe:
- the oldest due pending delivery: ``alert_deliveries_due_pending_idx`` (one ordered index read);
- counts of every status but ``delivered`` (the ones an operator acts on, and ``failed``, which grows
  only by ``poison resolve``): exact, an index range scan of ``alert_deliveries_status_channel_idx``;
- ``delivered`` (nearly every row, growing forever): exact while the table holds fewer than
  ``EXACT_COUNT_LIMIT`` rows (by the planner's estimate), above that the planner's row estimate per
  channel, which the extended statistics ``alert_deliveries_status_channel_stats`` keep within about 2 %
  (ANALYZE's 30,000-row sample; measured at 1,000,000 rows). The text screen marks estimated rows with ``~``;
  ``--json`` keeps the contract's shape (plain numbers).
Redis is read with ``SCAN`` (never ``KEYS``). This module imports no ``rq``: the scheduler probe is
passed in (``liveness.scheduler_locks``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
import redis

from alert_worker.cooldown import paused_channels
from alert_worker.digest import HELD_SQL
from alert_worker.keys import RedisKeys

STATUSES: tuple[str, ...] = ("pending", "in_progress", "delivered", "failed", "poison")
ESTIMATED_STATUSES: tuple[str, ...] = ("delivered",)
CHANNELS: tuple[str, ...] = ("email", "slack", "sms")
EXACT_COUNT_LIMIT = 100_000

COUNT_ALL_SQL = "SELECT status, channel, count(*) FROM alert_deliveries GROUP BY status, channel"
COUNT_EXACT_SQL = (
    "SELECT status, channel, count(*) FROM alert_deliveries "
    "WHERE status IN ('pending', 'in_progress', 'poison', 'failed') GROUP BY status, channel"
)
ESTIMATE_SQL = "EXPLAIN (FORMAT JSON) SELECT 1 FROM alert_deliveries WHERE status = %s AND channel = %s"
ROWS_ESTIMATE_SQL = "SELECT reltuples::bigint FROM pg_class WHERE oid = 'alert_deliveries'::regclass"
# Seconds since the oldest pending row became due; matches alert_deliveries_due_pending_idx exactly.
OLDEST_DUE_SQL = (
    "SELECT EXTRACT(EPOCH FROM now() - min(COALESCE(next_attempt_at, created_at)))::float8 "
    "FROM alert_deliveries WHERE status = 'pending' AND COALESCE(next_attempt_at, created_at) <= now()"
)
HELD_COUNT_SQL = f"SELECT channel, count(*) FROM alert_deliveries WHERE {HELD_SQL} GROUP BY channel"
SUPPRESSIONS_SQL = "SELECT count(*) FROM alert_suppressions"
SUPPRESSIONS_EXIST_SQL = "SELECT to_regclass('alert_suppressions') IS NOT NULL"


class ConnectionSource(Protocol):
    def connection(self) -> Any: ...


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    threads: int
    in_flight: int


@dataclass(frozen=True)
class Overview:
    deliveries: dict[str, dict[str, int]]
    oldest_due_pending_seconds: float | None
    poison: int
    cooldowns: int
    suppressions: int
    workers: list[WorkerInfo]
    scheduler: dict[str, bool]
    estimated: frozenset[str] = field(default_factory=frozenset)
    paused: dict[str, str] = field(default_factory=dict)  # channel -> reason (docs/contract.md §7.7)
    unknown: dict[str, str] = field(default_factory=dict)  # "postgres"/"redis" -> why it did not answer
    held: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHANNELS, 0))  # §8

    def as_json(self) -> dict[str, Any]:
        """Exactly the §6.4 object; with a side unknown, its parts are ``null`` and ``unknown`` says why."""
        view: dict[str, Any] = {
            "deliveries": self.deliveries,
            "oldest_due_pending_seconds": self.oldest_due_pending_seconds,
            "poison": self.poison,
            "cooldowns": self.cooldowns,
            "suppressions": self.suppressions,
            "workers": [{"name": w.name, "threads": w.threads, "in_flight": w.in_flight} for w in self.workers],
            "scheduler": self.scheduler,
            "paused": self.paused,
            "held": self.held,
        }
        if not self.unknown:
            return view
        for side, parts in (("postgres", _POSTGRES_PARTS), ("redis", _REDIS_PARTS)):
            if side in self.unknown:
                view.update(dict.fromkeys(parts))
        view["unknown"] = dict(self.unknown)
        return view


_POSTGRES_PARTS = ("deliveries", "oldest_due_pending_seconds", "poison", "suppressions", "held")
_REDIS_PARTS = ("cooldowns", "workers", "scheduler", "paused")


# -- Postgres ---------------------------------------------------------------------------------------
def _empty_counts() -> dict[str, dict[str, int]]:
    return {status: dict.fromkeys(CHANNELS, 0) for status in STATUSES}


def _add(counts: dict[str, dict[str, int]], rows: Sequence[tuple[Any, ...]]) -> None:
    for status, channel, n in rows:
        counts.setdefault(status, {}).setdefault(channel, 0)
        counts[status][channel] = int(n)


def delivery_counts(conn: Any, *, exact_limit: int = EXACT_COUNT_LIMIT) -> tuple[dict[str, dict[str, int]], bool]:
    """Counts by status and channel (every status and channel present, zeros included); ``True`` when
    ``delivered`` is the planner's estimate (a table over ``exact_limit`` rows)."""
    counts = _empty_counts()
    approx_rows = int(conn.execute(ROWS_ESTIMATE_SQL).fetchone()[0])
    if approx_rows < exact_limit:  # also -1: never analyzed, so assume small
        _add(counts, conn.execute(COUNT_ALL_SQL).fetchall())
        return counts, False
    _add(counts, conn.execute(COUNT_EXACT_SQL).fetchall())
    for status in ESTIMATED_STATUSES:
        for channel in CHANNELS:
            plan = conn.execute(ESTIMATE_SQL, (status, channel)).fetchone()[0]
            plan = json.loads(plan) if isinstance(plan, str) else plan
            counts[status][channel] = int(plan[0]["Plan"]["Plan Rows"])
    return counts, True


def oldest_due_pending_seconds(conn: Any) -> float | None:
    """Seconds since the oldest due pending delivery became due; ``None`` when nothing is due."""
    value = conn.execute(OLDEST_DUE_SQL).fetchone()[0]
    return None if value is None else max(0.0, float(value))


def held_counts(conn: Any) -> dict[str, int]:
    """Held deliveries per channel (§8), every channel present: pending rows whose last deferral was the
    per-recipient limit or a cooldown (an index range scan of the pending rows)."""
    held = dict.fromkeys(CHANNELS, 0)
    for channel, n in conn.execute(HELD_COUNT_SQL).fetchall():
        held[channel] = int(n)
    return held


def suppression_count(conn: Any) -> int:
    """Rows in ``alert_suppressions`` (0 before the table exists)."""
    if not conn.execute(SUPPRESSIONS_EXIST_SQL).fetchone()[0]:
        return 0
    return int(conn.execute(SUPPRESSIONS_SQL).fetchone()[0])


# -- Redis ------------------------------------------------------------------------------------------
def cooldown_count(client: redis.Redis, prefix: str) -> int:
    """Active cooldowns: keys ``<prefix>cooldown:*`` (they expire by TTL, so every key is active)."""
    return sum(1 for _ in client.scan_iter(match=RedisKeys(prefix).cooldowns_pattern, count=1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(raw: Any) -> int:
    try:
        return max(0, int(raw))
    except (TypeError, ValueError):
        return 0


def live_workers(client: redis.Redis, prefix: str) -> list[WorkerInfo]:
    """Registrations ``<prefix>worker:<name>`` whose ``<prefix>worker:<name>:alive`` key exists (§6.1)."""
    keys = RedisKeys(prefix)
    found = (keys.worker_name(_text(k)) for k in client.scan_iter(match=keys.workers_pattern, count=1000))
    names = sorted({name for name in found if name is not None})
    if not names:
        return []
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.exists(keys.worker_alive(name))
        pipe.hgetall(keys.worker(name))
    replies = pipe.execute(raise_on_error=False)
    workers = []
    for i, name in enumerate(names):
        alive, fields = replies[2 * i], replies[2 * i + 1]
        if not alive or not isinstance(fields, dict):  # gone, or a key that is not a registration hash
            continue
        values = {_text(k): v for k, v in fields.items()}
        workers.append(
            WorkerInfo(name=name, threads=_int(values.get("threads")), in_flight=_int(values.get("in_flight")))
        )
    return workers


# -- together ---------------------------------------------------------------------------------------
POSTGRES, REDIS = "postgres", "redis"


def collect_overview(
    *,
    database: ConnectionSource,
    redis_client: redis.Redis,
    prefix: str,
    queues: Sequence[str],
    scheduler_probe: Callable[[Sequence[str]], dict[str, bool]],
    exact_limit: int = EXACT_COUNT_LIMIT,
) -> Overview:
    """One read of Postgres (one connection) and Redis; the poison count is Postgres's (the truth)."""
    return collect_what_answers(
        database=database,
        redis_client=redis_client,
        prefix=prefix,
        queues=queues,
        scheduler_probe=scheduler_probe,
        exact_limit=exact_limit,
        strict=True,
    )


def collect_what_answers(
    *,
    database: ConnectionSource | None,
    redis_client: redis.Redis | None,
    prefix: str,
    queues: Sequence[str],
    scheduler_probe: Callable[[Sequence[str]], dict[str, bool]],
    unknown: dict[str, str] | None = None,
    exact_limit: int = EXACT_COUNT_LIMIT,
    strict: bool = False,
) -> Overview:
    """What Postgres and Redis answer; a side that is ``None`` or fails (unless ``strict``) is named in
    ``Overview.unknown`` with the reason, and its parts are shown as unknown, never as zero."""
    missing = dict(unknown or {})
    counts, estimated, oldest, suppressions = _empty_counts(), False, None, 0
    held: dict[str, int] = dict.fromkeys(CHANNELS, 0)
    try:
        if database is None:
            raise _Unanswered(missing.get(POSTGRES, "not reached"))
        with database.connection() as conn:
            counts, estimated = delivery_counts(conn, exact_limit=exact_limit)
            oldest = oldest_due_pending_seconds(conn)
            suppressions = suppression_count(conn)
            held = held_counts(conn)
    except (_Unanswered, psycopg.Error, OSError) as exc:
        if strict and not isinstance(exc, _Unanswered):
            raise
        missing[POSTGRES] = str(exc) if isinstance(exc, _Unanswered) else _reason(exc)
    cooldowns, workers, scheduler, paused = 0, [], {}, {}
    try:
        if redis_client is None:
            raise _Unanswered(missing.get(REDIS, "not reached"))
        cooldowns = cooldown_count(redis_client, prefix)
        paused = paused_channels(redis_client, prefix)
        workers = live_workers(redis_client, prefix)
        scheduler = scheduler_probe(list(queues))
    except (_Unanswered, redis.RedisError, OSError) as exc:
        if strict and not isinstance(exc, _Unanswered):
            raise
        missing[REDIS] = str(exc) if isinstance(exc, _Unanswered) else _reason(exc)
    return Overview(
        deliveries=counts,
        oldest_due_pending_seconds=oldest,
        poison=sum(counts["poison"].values()),
        cooldowns=cooldowns,
        suppressions=suppressions,
        workers=workers,
        scheduler=scheduler,
        estimated=frozenset(ESTIMATED_STATUSES) if estimated else frozenset(),
        paused=paused,
        unknown=missing,
        held=held,
    )


class _Unanswered(Exception):
    """A side the command could not reach before collecting."""


def _reason(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "none due"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def render_text(view: Overview) -> str:
    """The one screen: is anything stuck, is anything failing, are the workers alive. A side that did not
    answer is said once at the top, and each of its parts reads ``unknown``."""
    lines = [f"UNKNOWN: {side} did not answer ({why})" for side, why in view.unknown.items()]
    db = "postgres" not in view.unknown
    rd = "redis" not in view.unknown
    if db:
        lines.append(f"{'deliveries':<13}" + "".join(f"{c:>10}" for c in CHANNELS) + f"{'total':>10}")
        for status in STATUSES:
            row = view.deliveries.get(status, {})
            mark = "~" if status in view.estimated else " "
            cells = "".join(f"{mark}{row.get(c, 0):>9}" for c in CHANNELS)
            lines.append(f"  {status:<11}{cells}{mark}{sum(row.values()):>9}")
        if view.estimated:
            lines.append("  (~ planner estimate: the table is large; every other count is exact)")
    else:
        lines.append("deliveries: unknown")
    lines.append(f"oldest due pending: {_age(view.oldest_due_pending_seconds) if db else 'unknown'}")
    poison, suppressions = (view.poison, view.suppressions) if db else ("unknown", "unknown")
    cooldowns = view.cooldowns if rd else "unknown"
    lines.append(f"poison: {poison}   cooldowns: {cooldowns}   suppressions: {suppressions}")
    if db:
        waiting = "  ".join(f"{c} {view.held.get(c, 0)}" for c in CHANNELS)
        lines.append(f"held (the recipient's next message carries them): {waiting}")
    lines.extend(
        f"PAUSED {channel}: {reason} (its deliveries wait; see docs/operations.md)"
        for channel, reason in sorted(view.paused.items())
    )
    if not rd:
        lines.append("workers: unknown")
        lines.append("scheduler: unknown")
        return "\n".join(lines)
    busy = sum(w.in_flight for w in view.workers)
    threads = sum(w.threads for w in view.workers)
    lines.append(f"workers: {len(view.workers)} live, {busy}/{threads} threads busy (in flight sampled)")
    lines.extend(f"  {w.name}  threads {w.threads}  in flight {w.in_flight}" for w in view.workers)
    for queue, held in view.scheduler.items():
        lines.append(f"scheduler for {queue}: {'lock held' if held else 'NO SCHEDULER (retries will not run)'}")
    return "\n".join(lines)
