"""The operator commands behind ``alert-worker``: migrate, send, status, poison, sweep, check.

Each opens short-lived connections, does one thing, prints the answer on stdout and returns the exit
code. Nothing printed here contains a raw recipient, subject, body or secret.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
import redis
from psycopg_pool import ConnectionPool

from alert_worker.counters import poison_count, queue_depth
from alert_worker.models import ChannelType
from alert_worker.poison import PoisonQueue
from alert_worker.queries import OperatorQueries
from alert_worker.redaction import sanitize_text
from alert_worker.resources import Connections, open_job_pool, open_redis, short_lived
from alert_worker.rq_jobs import RqEnqueuer
from alert_worker.settings import Settings
from alert_worker.store import DeliveryStore
from alert_worker.suppression_commands import SUPPRESSION_COMMANDS, SuppressionCommandError, held_by
from alert_worker.sweep import enqueue_recovered
from alert_worker.worker import check_database, check_redis, require_connection_settings, safe_error, sweep_pass

REPLAY_BATCH = 500


class CommandFailed(Exception):
    """Print the message on stderr and exit 1."""


def _out(text: str = "") -> None:
    print(text, flush=True)


def _err(text: str) -> None:
    print(f"alert-worker: {text}", file=sys.stderr, flush=True)


def _json(value: Any) -> None:
    _out(json.dumps(value, default=_jsonable, sort_keys=True))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _show(value: Any) -> str:
    if value is None:
        return "-"
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _require_database(settings: Settings) -> None:
    if not settings.database_url:
        raise CommandFailed("DATABASE_URL is not set")


@contextmanager
def _database(settings: Settings) -> Iterator[ConnectionPool]:
    _require_database(settings)
    database = open_job_pool(settings)
    try:
        yield database
    finally:
        database.close()


@contextmanager
def _both(settings: Settings) -> Iterator[Connections]:
    missing = [n for n, v in (("DATABASE_URL", settings.database_url), ("REDIS_URL", settings.redis_url)) if not v]
    if missing:
        raise CommandFailed(f"required environment variable not set: {', '.join(missing)}")
    with short_lived(settings) as conns:
        yield conns


# -- commands -----------------------------------------------------------------------------------------
def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    with _database(settings) as database:
        DeliveryStore(pool=database).migrate()
    _out("migrated")
    return 0


def cmd_send(args: argparse.Namespace, settings: Settings) -> int:
    from alert_worker.producer import QueueFullError, send_alert

    require_connection_settings_or_fail(settings)
    try:
        outcome = send_alert(
            args.channel,
            args.to,
            args.subject,
            args.body,
            delivery_id=args.id,
            queue=args.queue,
            alert_id=args.alert_id,
            dedup_key=args.dedup_key,
            settings=settings,
        )
    except QueueFullError as exc:
        raise CommandFailed(f"{exc}. Nothing was created. See README 'Operations' (queue depth).") from exc
    except ValueError as exc:
        _err(str(exc))
        return 2
    if not outcome.created:
        _err("a delivery with this id or dedup key already exists; nothing was created or enqueued")
    _out(outcome.delivery_id)
    return 0


def require_connection_settings_or_fail(settings: Settings) -> None:
    from alert_worker.worker import StartupError

    try:
        require_connection_settings(settings)
    except StartupError as exc:
        raise CommandFailed(str(exc)) from exc


_STATUS_FIELDS = (
    ("id", "id"),
    ("status", "status"),
    ("channel", "channel"),
    ("recipient", "recipient"),
    ("attempts", "attempts"),
    ("deferrals", "deferrals"),
    ("next_attempt_at", "next_attempt_at"),
    ("last_attempt_at", "last_attempt_at"),
    ("last_error", "error_message"),
    ("delivered_at", "delivered_at"),
    ("poison_at", "poison_at"),
    ("provider_message_id", "provider_message_id"),
    ("queue", "queue"),
    ("alert_id", "alert_id"),
    ("created_at", "created_at"),
    ("updated_at", "updated_at"),
)


def cmd_overview(args: argparse.Namespace, settings: Settings) -> int:
    """``status`` with no id: the one-screen overview (``alert_worker.overview``)."""
    from alert_worker.overview import collect_overview, render_text
    from alert_worker.rq_jobs import scheduler_locks

    with _both(settings) as conns:
        view = collect_overview(
            database=conns.database,
            redis_client=conns.redis,
            prefix=settings.redis_key_prefix,
            queues=settings.queues,
            scheduler_probe=lambda queues: scheduler_locks(conns.redis, queues),
        )
    if args.json:
        _json(view.as_json())
    else:
        _out(render_text(view))
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    if args.id is None:
        return cmd_overview(args, settings)
    with _database(settings) as database:
        row = OperatorQueries(source=database).status(args.id)
    if row is None:
        raise CommandFailed(f"no delivery with id {args.id!r}")
    view = {label: row[column] for label, column in _STATUS_FIELDS}
    holder = held_by(row["error_message"])
    if holder is not None:  # provider feedback (§6.2): which rule holds it and what to do
        view["held_by"] = holder
    if args.json:
        _json(view)
    else:
        width = max(len(label) for label, _ in _STATUS_FIELDS) + 1
        for label, value in view.items():
            _out(f"{label + ':':<{width}} {_show(value)}")
    return 0


def cmd_poison_list(args: argparse.Namespace, settings: Settings) -> int:
    with _database(settings) as database:
        rows = OperatorQueries(source=database).list_poison(channel=args.channel, since=args.since, limit=args.limit)
    if args.json:
        _json(rows)
        return 0
    if not rows:
        _out("the poison queue is empty" if not (args.channel or args.since) else "no poisoned deliveries match")
        return 0
    _out(f"{'ID':<38} {'CHANNEL':<7} {'RECIPIENT':<28} {'TRIES':>5}  {'POISONED AT':<25} ERROR")
    for r in rows:
        error = (r["error_message"] or "-") + ("" if r["replayable"] else "  [not replayable: resolve it]")
        _out(
            f"{r['id']:<38} {r['channel']:<7} {r['recipient']:<28} {r['attempts']:>5}  "
            f"{_show(r['poison_at']):<25} {error}"
        )
    return 0


def _explain_skipped(queries: OperatorQueries, ids: list[str], done: set[str]) -> dict[str, str]:
    rest = [i for i in dict.fromkeys(ids) if i not in done]
    if not rest:
        return {}
    statuses = queries.statuses(rest)
    reasons = {}
    for delivery_id in rest:
        status = statuses.get(delivery_id)
        if status is None:
            reasons[delivery_id] = "no such delivery"
        elif status == "poison":
            reasons[delivery_id] = "no stored payload, cannot be replayed (resolve it)"
        else:
            reasons[delivery_id] = f"not in the poison queue (status {status})"
    return reasons


def cmd_poison_replay(args: argparse.Namespace, settings: Settings) -> int:
    with _both(settings) as conns:
        queries = OperatorQueries(source=conns.database)
        explicit = list(dict.fromkeys(args.ids)) or None
        targets = queries.replayable_ids(ids=explicit, channel=args.channel, since=args.since)
        replayed: list[str] = []
        enqueue_failed: list[str] = []
        if not args.dry_run:
            replayed, enqueue_failed = _replay(settings, conns, targets)
        skipped = _explain_skipped(queries, explicit or [], set(targets if args.dry_run else replayed))
    if args.json:
        _json(
            {
                "dry_run": bool(args.dry_run),
                "replayed": targets if args.dry_run else replayed,
                "skipped": skipped,
                "enqueue_failed": enqueue_failed,
            }
        )
    else:
        verb = "would replay" if args.dry_run else "replayed"
        for delivery_id in targets if args.dry_run else replayed:
            _out(f"{verb} {delivery_id}")
        _out(f"{verb} {len(targets if args.dry_run else replayed)} deliveries")
    for delivery_id, reason in skipped.items():
        _err(f"skipped {delivery_id}: {reason}")
    for delivery_id in enqueue_failed:
        _err(f"{delivery_id}: back to pending but its job could not be enqueued; the sweep will enqueue it")
    return 1 if skipped or enqueue_failed else 0


def _replay(settings: Settings, conns: Connections, targets: list[str]) -> tuple[list[str], list[str]]:
    """Move each target back to pending once (the UPDATE only takes poison rows), then enqueue it."""
    prefix = settings.redis_key_prefix
    poison_queue = PoisonQueue(store=conns.store, gauge=poison_count(conns.redis, prefix))
    depth = queue_depth(conns.redis, prefix)
    enqueuer = RqEnqueuer(connection=conns.redis, job_timeout_seconds=settings.job_timeout_seconds)
    replayed: list[str] = []
    failed: list[str] = []
    for start in range(0, len(targets), REPLAY_BATCH):
        moved = poison_queue.replay(targets[start : start + REPLAY_BATCH])
        depth.add(len(moved))
        for row in moved:
            try:
                enqueue_recovered(enqueuer, row, kind="replay")  # attempts are 0 after a replay
                replayed.append(row.id)
            except redis.RedisError:
                failed.append(row.id)
    return replayed, failed


def cmd_poison_resolve(args: argparse.Namespace, settings: Settings) -> int:
    note = sanitize_text(args.note) if args.note else None
    ids = list(dict.fromkeys(args.ids))
    with _database(settings) as database:
        store = DeliveryStore(pool=database)
        client = open_redis(settings) if settings.redis_url else None
        try:
            gauge = poison_count(client, settings.redis_key_prefix) if client else None
            moved = (
                PoisonQueue(store=store, gauge=gauge).resolve(ids, note=note)
                if gauge
                else store.resolve(ids, note=note)
            )
        finally:
            if client is not None:
                client.close()
        skipped = _explain_skipped(OperatorQueries(source=database), ids, set(moved))
    for delivery_id in moved:
        _out(f"resolved {delivery_id}")
    for delivery_id, reason in skipped.items():
        _err(f"skipped {delivery_id}: {reason}")
    return 1 if skipped else 0


def cmd_sweep(args: argparse.Namespace, settings: Settings) -> int:
    require_connection_settings_or_fail(settings)
    report = sweep_pass(settings, lock_ttl_seconds=max(60.0, settings.sweep_interval_seconds * 2), release_lock=True)
    if report is None:
        message = "another sweeper holds the lock (a worker swept within the last interval); nothing done"
        if args.json:
            _json({"swept": False, "reason": message})
        else:
            _out(message)
        return 0
    if args.json:
        _json({"swept": True, "requeued": report.requeued, "queue_depth": report.queue_depth, "poison": report.poison})
    else:
        _out(f"requeued {report.requeued}; queue depth {report.queue_depth}; poison queue {report.poison}")
    return 0


def run_check(settings: Settings) -> dict[str, Any]:
    """Every check's verdict; ``ok`` is true when the database and Redis answer."""
    from alert_worker.worker import StartupError

    result: dict[str, Any] = {"warnings": []}
    warnings: list[str] = result["warnings"]
    try:
        require_connection_settings(settings)
    except StartupError as exc:
        warnings.append(str(exc))
    result["database"] = _check(lambda: check_database(settings), settings.database_url, "DATABASE_URL")
    if result["database"] == "ok":
        with _database(settings) as database, database.connection() as conn:
            present = conn.execute("SELECT to_regclass('alert_deliveries') IS NOT NULL").fetchone()
        if not (present and present[0]):
            warnings.append("schema missing: run `alert-worker migrate` (the worker migrates at start-up)")
    result["redis"] = _check(lambda: check_redis(settings), settings.redis_url, "REDIS_URL")
    if result["redis"] == "ok":
        _check_redis_details(settings, result, warnings)
    channels: dict[str, str] = {}
    missing = settings.missing_channel_settings()
    for channel in ChannelType:
        if channel in missing:
            channels[channel.value] = f"disabled (missing {', '.join(missing[channel])})"
        elif channel is ChannelType.SLACK and not settings.slack.default_webhook_url:
            channels[channel.value] = "configured (no SLACK_WEBHOOK_URL: recipients must name their webhook)"
        else:
            channels[channel.value] = "configured"
    result["channels"] = channels
    result["ok"] = result["database"] == "ok" and result["redis"] == "ok"
    return result


def _check(probe: Callable[[], None], url: str, variable: str) -> str:
    if not url:
        return f"not configured ({variable} is not set)"
    from alert_worker.worker import StartupError

    try:
        probe()
    except StartupError as exc:
        return f"unreachable: {exc}"
    return "ok"


def _check_redis_details(settings: Settings, result: dict[str, Any], warnings: list[str]) -> None:
    from rq.scheduler import RQScheduler

    client = open_redis(settings)
    try:
        try:
            policy = str(client.config_get("maxmemory-policy").get("maxmemory-policy", "unknown"))
        except redis.RedisError:
            policy = "unknown (CONFIG GET not allowed)"
        result["redis_maxmemory_policy"] = policy
        if policy != "noeviction":
            warnings.append(
                f"Redis maxmemory-policy is {policy}, not noeviction: Redis may evict queued jobs and rate-limit "
                "keys (the sweep recovers lost jobs, but late)"
            )
        schedulers = {q: bool(client.exists(RQScheduler.get_locking_key(q))) for q in settings.queues}
        result["scheduler"] = schedulers
        for queue, seen in schedulers.items():
            if not seen:
                warnings.append(
                    f"no RQ scheduler holds the lock for queue {queue!r}: retries and deferrals will not run "
                    "(start a worker with the scheduler: `alert-worker` or `rq worker --with-scheduler`)"
                )
    finally:
        client.close()


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    result = run_check(settings)
    if args.json:
        _json(result)
    else:
        _out(f"database: {result['database']}")
        _out(f"redis: {result['redis']}")
        if "redis_maxmemory_policy" in result:
            _out(f"redis maxmemory-policy: {result['redis_maxmemory_policy']}")
        for queue, seen in result.get("scheduler", {}).items():
            _out(f"scheduler for {queue}: {'seen' if seen else 'NOT SEEN'}")
        for channel, state in result["channels"].items():
            _out(f"channel {channel}: {state}")
        for warning in result["warnings"]:
            _out(f"WARNING: {warning}")
        _out("ok" if result["ok"] else "FAILED")
    return 0 if result["ok"] else 1


_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "migrate": cmd_migrate,
    "send": cmd_send,
    "status": cmd_status,
    "poison list": cmd_poison_list,
    "poison replay": cmd_poison_replay,
    "poison resolve": cmd_poison_resolve,
    "sweep": cmd_sweep,
    "check": cmd_check,
    **SUPPRESSION_COMMANDS,
}


def run_command(command: str, args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch; a failure prints one line on stderr and exits 1."""
    if command == "poison":
        command = f"poison {args.poison_command}"
    if command == "suppression":
        command = f"suppression {args.suppression_command}"
    try:
        return _COMMANDS[command](args, settings)
    except (CommandFailed, SuppressionCommandError) as exc:
        _err(str(exc))
        return 1
    except (psycopg.Error, redis.RedisError, OSError) as exc:
        _err(f"{command} failed: {safe_error(exc)}")
        return 1
