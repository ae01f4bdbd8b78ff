"""The operator commands behind ``alert-worker``: migrate, send, status, poison, sweep, check.

Each opens short-lived connections, does one thing, prints the answer on stdout and returns the exit
code. Nothing printed here contains a raw recipient, subject, body or secret.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import psycopg
import redis
import structlog

from alert_worker.console import (
    CommandFailed,
    connections,
    database_pool,
    err,
    out,
    print_json,
    reachable_database,
    require_connection_settings_or_fail,
    show,
)
from alert_worker.redaction import safe_error, sanitize_text
from alert_worker.resources import open_redis
from alert_worker.settings import Settings
from alert_worker.suppression_commands import SUPPRESSION_COMMANDS, SuppressionCommandError, held_by

# Heavier modules (rq, the executor, the channels) are imported by the commands that need them:
# `alert-worker status` loads none of them.


# -- commands -----------------------------------------------------------------------------------------
def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from alert_worker.store import DeliveryStore

    with database_pool(settings) as database:
        DeliveryStore(pool=database).migrate()
    out("migrated")
    return 0


def cmd_send(args: argparse.Namespace, settings: Settings) -> int:
    from alert_worker.producer import QueueFullError, send_alert

    require_connection_settings_or_fail(settings)
    reachable_database(settings)
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
        err(str(exc))
        return 2
    if not outcome.created:
        err("a delivery with this id or dedup key already exists; nothing was created or enqueued")
    elif not outcome.enqueued:
        err("warning: the delivery is recorded but its job could not be enqueued; the sweep will enqueue it")
    out(outcome.delivery_id)
    return 0


_STATUS_COLUMNS = (
    *("id", "status", "channel", "recipient", "attempts", "deferrals", "next_attempt_at", "last_attempt_at"),
    *("error_message", "delivered_at", "poison_at", "provider_message_id", "delivered_via", "queue", "alert_id"),
    *("created_at", "updated_at"),
)
_STATUS_FIELDS = tuple(("last_error" if c == "error_message" else c, c) for c in _STATUS_COLUMNS)


def cmd_overview(args: argparse.Namespace, settings: Settings) -> int:
    """``status`` with no id: the one-screen overview (``alert_worker.overview``)."""
    from alert_worker.liveness import scheduler_locks
    from alert_worker.overview import collect_overview, render_text

    with connections(settings) as conns:
        view = collect_overview(
            database=conns.database,
            redis_client=conns.redis,
            prefix=settings.redis_key_prefix,
            queues=settings.queues,
            scheduler_probe=lambda queues: scheduler_locks(conns.redis, queues),
        )
    if args.json:
        print_json(view.as_json())
    else:
        out(render_text(view))
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    if args.id is None:
        return cmd_overview(args, settings)
    from alert_worker.queries import OperatorQueries

    with database_pool(settings) as database:
        row = OperatorQueries(source=database).status(args.id)
    if row is None:
        raise CommandFailed(f"no delivery with id {args.id!r}")
    view = {label: row[column] for label, column in _STATUS_FIELDS}
    from alert_worker.digest import is_held

    if is_held(row["status"], row["error_message"]):  # §8: what the recipient's next message carries
        view["held"] = True
    holder = held_by(row["error_message"])
    if holder is not None:  # provider feedback (§6.2): which rule holds it and what to do
        view["held_by"] = holder
    if args.json:
        print_json(view)
    else:
        width = max(len(label) for label, _ in _STATUS_FIELDS) + 1
        for label, value in view.items():
            out(f"{label + ':':<{width}} {show(value)}")
    return 0


def cmd_poison_list(args: argparse.Namespace, settings: Settings) -> int:
    from alert_worker.poison import list_poisoned
    from alert_worker.queries import OperatorQueries

    with database_pool(settings) as database:
        rows = list_poisoned(OperatorQueries(source=database), channel=args.channel, since=args.since, limit=args.limit)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        out("the poison queue is empty" if not (args.channel or args.since) else "no poisoned deliveries match")
        return 0
    out(f"{'ID':<38} {'CHANNEL':<7} {'RECIPIENT':<28} {'TRIES':>5}  {'POISONED AT':<25} ERROR")
    for r in rows:
        error = (r["error_message"] or "-") + ("" if r["replayable"] else "  [not replayable: resolve it]")
        out(
            f"{r['id']:<38} {r['channel']:<7} {r['recipient']:<28} {r['attempts']:>5}  "
            f"{show(r['poison_at']):<25} {error}"
        )
    return 0


def cmd_poison_replay(args: argparse.Namespace, settings: Settings) -> int:
    from alert_worker import poison
    from alert_worker.wiring import collaborators

    with connections(settings) as conns:
        tools = collaborators(settings, pool=conns.database, client=conns.redis)
        result = poison.replay(tools, ids=args.ids, channel=args.channel, since=args.since, dry_run=args.dry_run)
    if args.json:
        print_json(
            {
                "dry_run": result.dry_run,
                "replayed": result.replayed,
                "skipped": result.skipped,
                "enqueue_failed": result.enqueue_failed,
            }
        )
    else:
        verb = "would replay" if result.dry_run else "replayed"
        for delivery_id in result.replayed:
            out(f"{verb} {delivery_id}")
        out(f"{verb} {len(result.replayed)} deliveries")
    for delivery_id, reason in result.skipped.items():
        err(f"skipped {delivery_id}: {reason}")
    for delivery_id in result.enqueue_failed:
        err(f"{delivery_id}: back to pending but its job could not be enqueued; the sweep will enqueue it")
    return 1 if result.skipped or result.enqueue_failed else 0


def cmd_poison_resolve(args: argparse.Namespace, settings: Settings) -> int:
    from alert_worker import poison
    from alert_worker.queries import OperatorQueries
    from alert_worker.store import DeliveryStore
    from alert_worker.wiring import collaborators

    note = sanitize_text(args.note) if args.note else None
    with database_pool(settings) as database:
        client = open_redis(settings) if settings.redis_url else None  # without Redis the gauge waits for a sweep
        try:
            parts = collaborators(settings, pool=database, client=client) if client else None
            store = parts.store if parts else DeliveryStore(pool=database)
            queries = OperatorQueries(source=database)
            parked = parts.poison_queue if parts else None
            result = poison.resolve(store, queries, parked, ids=args.ids, note=note)
        finally:
            if client is not None:
                client.close()
    for delivery_id in result.resolved:
        out(f"resolved {delivery_id}")
    for delivery_id, reason in result.skipped.items():
        err(f"skipped {delivery_id}: {reason}")
    return 1 if result.skipped else 0


_RELEASE_ROUNDS = 3  # a held row claimed by its own wake-up job at that moment is tried again


def cmd_release(args: argparse.Namespace, settings: Settings) -> int:
    """``release``: the oldest held delivery's job, flagged to pass the limit once, carries the others (§8).

    The send runs in a worker (the providers' settings and clients stay there); this enqueues it at the
    front of its queue and waits, bounded by ``--timeout``, for the outcome.
    """
    from alert_worker.delivery import recipient_identity
    from alert_worker.models import ChannelType
    from alert_worker.wiring import collaborators

    require_connection_settings_or_fail(settings)
    channel = ChannelType(args.channel)
    carrier: str | None = None
    carried = 0
    with connections(settings) as conns:
        tools = collaborators(settings, pool=conns.database, client=conns.redis)
        secret = tools.store.recipient_hash_secret(settings.recipient_hash_secret)
        rhash, _ = recipient_identity(secret, channel, args.to, default_webhook_url=settings.slack.default_webhook_url)
        for _ in range(_RELEASE_ROUNDS):
            row = tools.store.oldest_held(channel=channel.value, recipient_hash=rhash)
            if row is None:
                break
            job_id = tools.enqueuer.enqueue_release(row)
            structlog.get_logger("alert_worker.cli").info(
                "held_release_enqueued", delivery_id=row.id, channel=row.channel, recipient_hash=rhash
            )
            result = tools.enqueuer.wait_for_result(job_id, timeout_seconds=args.timeout)
            if result is None:
                raise CommandFailed(
                    f"release of {sanitize_text(row.id)!r}: no outcome within {args.timeout} s; "
                    "its job stays queued and a worker will send it (see `alert-worker status`)"
                )
            if result.get("outcome") == "delivered":
                carrier, carried = row.id, 1 + tools.store.carried_count(row.id)
                break
            if result.get("outcome") != "skipped":  # e.g. a cooldown still holds it, or the send failed
                raise CommandFailed(
                    f"release of {sanitize_text(row.id)!r}: {result.get('outcome')} ({result.get('error')}); "
                    "it stays held"
                )
    if args.json:
        print_json({"carried": carried, "delivery_id": carrier})
    else:
        if carrier is not None:
            out(f"released {sanitize_text(carrier)}")
        out(f"carried {carried}")
    return 0


def cmd_sweep(args: argparse.Namespace, settings: Settings) -> int:
    from alert_worker.sweep import sweep_pass

    require_connection_settings_or_fail(settings)
    reachable_database(settings)
    report = sweep_pass(settings, lock_ttl_seconds=max(60.0, settings.sweep_interval_seconds * 2), release_lock=True)
    if report is None:
        message = "another sweeper holds the lock (a worker swept within the last interval); nothing done"
        if args.json:
            print_json({"swept": False, "reason": message})
        else:
            out(message)
        return 0
    if args.json:
        print_json(
            {"swept": True, "requeued": report.requeued, "queue_depth": report.queue_depth, "poison": report.poison}
        )
    else:
        out(f"requeued {report.requeued}; queue depth {report.queue_depth}; poison queue {report.poison}")
    return 0


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from alert_worker.health import run_check

    result = run_check(settings)
    if args.json:
        print_json(result)
    else:
        out(f"database: {result['database']}")
        out(f"redis: {result['redis']}")
        if "redis_maxmemory_policy" in result:
            out(f"redis maxmemory-policy: {result['redis_maxmemory_policy']}")
        for queue, seen in result.get("scheduler", {}).items():
            out(f"scheduler for {queue}: {'seen' if seen else 'NOT SEEN'}")
        for channel, state in result["channels"].items():
            out(f"channel {channel}: {state}")
        for warning in result["warnings"]:
            out(f"WARNING: {warning}")
        out("ok" if result["ok"] else "FAILED")
    return 0 if result["ok"] else 1


_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "migrate": cmd_migrate,
    "send": cmd_send,
    "status": cmd_status,
    "poison list": cmd_poison_list,
    "poison replay": cmd_poison_replay,
    "poison resolve": cmd_poison_resolve,
    "sweep": cmd_sweep,
    "release": cmd_release,
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
        err(str(exc))
        return 1
    except (psycopg.Error, redis.RedisError, OSError) as exc:
        err(f"{command} failed: {safe_error(exc)}")
        return 1
