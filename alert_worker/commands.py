"""The operator commands behind ``alert-worker``: migrate, send, status, poison, sweep, check.

Each opens short-lived connections, does one thing, prints the answer on stdout and returns the exit
code. Nothing printed here contains a raw recipient, subject, body or secret.
"""

from __future__ import annotations

import argparse
import re
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
    table,
)
from alert_worker.redaction import safe_error, sanitize_text, url_password
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

    refused = _recipient_refused(args.channel, args.to, settings)
    if refused is not None:
        err(f"--to refused, nothing was created: {refused}")
        return 2
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


def _recipient_refused(channel: str, recipient: str, settings: Settings) -> str | None:
    """Why the job would poison this recipient unsent (its shape, the Slack host), or ``None``."""
    from alert_worker.channels import check_recipient
    from alert_worker.errors import InvalidInputError
    from alert_worker.models import ChannelType

    try:
        check_recipient(ChannelType(channel), recipient, settings)
    except InvalidInputError as exc:
        return exc.reason
    return None


_STATUS_COLUMNS = (
    *("id", "status", "channel", "recipient", "attempts", "deferrals", "next_attempt_at", "last_attempt_at"),
    *("error_message", "delivered_at", "poison_at", "provider_message_id", "delivered_via", "queue", "alert_id"),
    *("created_at", "updated_at"),
)
_STATUS_FIELDS = tuple(("last_error" if c == "error_message" else c, c) for c in _STATUS_COLUMNS)


def cmd_overview(args: argparse.Namespace, settings: Settings) -> int:
    """``status`` with no id: the one-screen overview (``alert_worker.overview``). When Postgres or Redis does
    not answer, what the other knows is shown, the missing parts read unknown, and the exit code is 1."""
    from alert_worker.liveness import scheduler_locks
    from alert_worker.overview import POSTGRES, REDIS, collect_what_answers, render_text
    from alert_worker.resources import open_job_pool

    require_connection_settings_or_fail(settings)
    unknown: dict[str, str] = {}
    database = client = None
    try:
        reachable_database(settings)
        database = open_job_pool(settings)
    except CommandFailed as exc:
        unknown[POSTGRES] = str(exc)
    try:
        client = open_redis(settings)
        client.ping()
    except (redis.RedisError, OSError) as exc:
        unknown[REDIS] = f"redis unreachable: {safe_error(exc, url_password(settings.redis_url))}"
        if client is not None:
            client.close()
        client = None
    if database is None and client is None:
        raise CommandFailed(f"{unknown[POSTGRES]}; {unknown[REDIS]}")
    try:
        probe_client = client
        view = collect_what_answers(
            database=database,
            redis_client=client,
            prefix=settings.redis_key_prefix,
            queues=settings.queues,
            scheduler_probe=lambda queues: scheduler_locks(probe_client, queues) if probe_client else {},
            unknown=unknown,
        )
    finally:
        if database is not None:
            database.close()
        if client is not None:
            client.close()
    if args.json:
        print_json(view.as_json())
    else:
        out(render_text(view))
    for side, why in view.unknown.items():
        err(f"{side} did not answer, its parts are unknown: {why}")
    return 1 if view.unknown else 0


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
    holder = held_by(row["error_message"], str(row["channel"]))
    if holder is not None:  # provider feedback (§6.2): which rule holds it and what to do
        view["held_by"] = holder
    paused = _channel_pause(settings, str(row["channel"]))
    if paused is not None:  # §7.7: the channel waits for its settings to be fixed
        view["channel_paused"] = paused
    if args.json:
        print_json(view)
    else:
        width = max(len(label) for label, _ in _STATUS_FIELDS) + 1
        for label, value in view.items():
            out(f"{label + ':':<{width}} {show(value)}")
    return 0


def _channel_pause(settings: Settings, channel: str) -> str | None:
    """The reason the channel is paused, if it is; Redis unreachable or unset: shown as unknown."""
    from alert_worker.cooldown import paused_channels

    if not settings.redis_url:
        return None
    try:
        client = open_redis(settings)
        try:
            return paused_channels(client, settings.redis_key_prefix).get(channel)
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return "unknown (Redis did not answer)"


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
    cells = [
        (
            show(r["id"]),
            show(r["channel"]),
            show(r["recipient"]),
            show(r["attempts"]),
            show(r["poison_at"]),
            show(r["error_message"]) + ("" if r["replayable"] else "  [not replayable: resolve it]"),
        )
        for r in rows
    ]
    for line in table(("ID", "CHANNEL", "RECIPIENT", "TRIES", "POISONED AT", "ERROR"), cells, right=frozenset({3})):
        out(line)
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
            out(f"{verb} {show(delivery_id)}")
        for delivery_id in result.enqueue_failed:
            out(f"{verb} {show(delivery_id)} (back to pending, not enqueued: the sweep enqueues it)")
        out(f"{verb} {len(result.replayed) + len(result.enqueue_failed)} deliveries")
    for delivery_id, reason in result.skipped.items():
        err(f"skipped {show(delivery_id)}: {reason}")
    if result.enqueue_failed:  # like send: the rows are pending, which is what a replay promises
        err(
            f"warning: {len(result.enqueue_failed)} replayed deliveries are back to pending but their jobs could "
            "not be enqueued (Redis); the sweep will enqueue them (`alert-worker sweep` once Redis answers)"
        )
    return 1 if result.skipped else 0


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
        out(f"resolved {show(delivery_id)}")
    for delivery_id, reason in result.skipped.items():
        err(f"skipped {show(delivery_id)}: {reason}")
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
        for channel, verdict in result["logins"].items():
            out(f"{channel} login: {verdict}")
        for warning in result["warnings"]:
            out(f"WARNING: {warning}")
        out("ok" if result["ok"] else "FAILED")
    return 0 if result["ok"] else 1


def cmd_cooldown_list(args: argparse.Namespace, settings: Settings) -> int:
    """Running cooldowns with their masked destination and time left (Redis only)."""
    from alert_worker.cooldown import Cooldowns

    require_connection_settings_or_fail(settings)
    client = open_redis(settings)
    try:
        cooling = Cooldowns(client=client, key_prefix=settings.redis_key_prefix).active(args.channel)
    finally:
        client.close()
    if args.json:
        print_json([c.as_json() for c in cooling])
        return 0
    if not cooling:
        out("no active cooldowns")
        return 0
    cells = [(c.channel, c.destination_hash, show(c.destination), f"{c.remaining_seconds:.1f}") for c in cooling]
    for line in table(("CHANNEL", "HASH", "DESTINATION", "SECONDS LEFT"), cells, right=frozenset({3})):
        out(line)
    return 0


def _cooldown_hash(args: argparse.Namespace, settings: Settings) -> str:
    """The destination hash ``--to`` names, hashed as the workers hash it (the secret from Postgres if unset)."""
    from alert_worker.cooldown import destination_hash
    from alert_worker.store import DeliveryStore
    from alert_worker.validation import SLACK_DEFAULT_RECIPIENTS

    destination = args.to.strip()
    if args.channel == "slack" and destination in SLACK_DEFAULT_RECIPIENTS:
        destination = settings.slack.default_webhook_url
        if not destination:
            raise CommandFailed("--to default means SLACK_WEBHOOK_URL, which is not set here: give --hash HASH")
    secret = settings.recipient_hash_secret
    if not secret:
        with database_pool(settings) as database:
            secret = DeliveryStore(pool=database).recipient_hash_secret()
    return destination_hash(secret, args.channel, destination)


def cmd_cooldown_clear(args: argparse.Namespace, settings: Settings) -> int:
    """End one destination's cooldown (``--to`` or ``--hash``) or a channel's (``--all``) now; idempotent."""
    from alert_worker.cooldown import Cooldowns

    require_connection_settings_or_fail(settings)
    if args.hash is not None and not re.fullmatch(r"[0-9a-f]{16}", args.hash.strip().lower()):
        raise CommandFailed("--hash must be the 16 hex characters `alert-worker cooldown list` prints")
    wanted = None if args.all else (args.hash.strip().lower() if args.hash else _cooldown_hash(args, settings))
    client = open_redis(settings)
    try:
        cooldowns = Cooldowns(client=client, key_prefix=settings.redis_key_prefix)
        hashes = [c.destination_hash for c in cooldowns.active(args.channel)] if wanted is None else [wanted]
        cleared = cooldowns.clear(args.channel, hashes)
    finally:
        client.close()
    if wanted is None:
        out(f"cleared {cleared} {args.channel} cooldowns")
    else:
        out(f"{'cleared' if cleared else 'not cooling'}: {args.channel} {wanted}")
    return 0


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
    "cooldown list": cmd_cooldown_list,
    "cooldown clear": cmd_cooldown_clear,
    **SUPPRESSION_COMMANDS,
}


def run_command(command: str, args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch; a failure prints one line on stderr and exits 1."""
    if command == "poison":
        command = f"poison {args.poison_command}"
    if command == "suppression":
        command = f"suppression {args.suppression_command}"
    if command == "cooldown":
        command = f"cooldown {args.cooldown_command}"
    try:
        return _COMMANDS[command](args, settings)
    except (CommandFailed, SuppressionCommandError) as exc:
        err(str(exc))
        return 1
    except (psycopg.Error, redis.RedisError, OSError) as exc:
        secrets = (url_password(settings.database_url), url_password(settings.redis_url))
        err(f"{command} failed: {safe_error(exc, *secrets)}")
        return 1
