"""``alert-worker``: run the worker (the default), and the operator commands.

Exit codes: 0 done, 1 failed (a server down, a delivery not found, the queue full), 2 usage error.
The worker logs JSON to stdout; operator commands print their answer on stdout (``--json`` on the read
commands) and their log lines on stderr, so ``alert-worker status ID --json | jq`` works.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from alert_worker import __version__
from alert_worker.errors import ConfigurationError
from alert_worker.logs import configure_logging
from alert_worker.settings import Settings
from alert_worker.suppression_commands import add_suppression_parser

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(raw: str, *, now: datetime | None = None) -> datetime:
    """``30m``, ``2h``, ``7d`` ago, or an ISO-8601 time (UTC when it has no offset)."""
    found = _DURATION.match(raw.strip())
    if found:
        amount, unit = int(found.group(1)), _UNITS[found.group(2)]
        try:
            return (now or datetime.now(UTC)) - timedelta(**{unit: amount})
        except OverflowError:
            raise argparse.ArgumentTypeError(f"{raw!r} reaches before year 1") from None
    try:
        when = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration like 30m, 2h, 7d or an ISO time, got {raw!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {raw!r}")
    return value


def _threads(raw: str) -> int:
    """``--threads``: not an integer is a usage error (exit 2); an integer outside 1..64 is refused at
    start-up like ``ALERT_WORKER_THREADS`` (exit 1, one logged reason: docs/contract.md §6.1)."""
    try:
        return int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads must be an integer 1..64, got {raw!r}") from None


def _worker_class(raw: str) -> type[Any]:
    """An importable RQ worker class, e.g. ``rq.worker.SimpleWorker``; checked before anything starts."""
    from alert_worker.worker import load_worker_class  # loads rq: only when the option is given

    try:
        return load_worker_class(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_options(parser: argparse.ArgumentParser, *, default: Any) -> None:
    parser.add_argument(
        "--burst",
        action="store_true",
        default=default,
        help="exit when the queues are empty (no scheduler, no sweeper)",
    )
    parser.add_argument(
        "--worker-class", type=_worker_class, default=default, help="RQ worker class, e.g. rq.worker.SimpleWorker"
    )
    parser.add_argument(
        "--threads", type=_threads, default=default, help="deliveries at once, 1-64 (default ALERT_WORKER_THREADS or 8)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alert-worker",
        description="Deliver alerts by e-mail, Slack and SMS from RQ jobs. With no command: run the worker.",
    )
    parser.add_argument("--version", action="version", version=f"alert-worker {__version__}")
    _run_options(parser, default=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the worker (the default command)", description="Run the RQ worker.")
    _run_options(run, default=argparse.SUPPRESS)
    sub.add_parser("migrate", help="create or update the database schema (idempotent)")

    send = sub.add_parser(
        "send",
        help="record a delivery and enqueue it; prints its id on the last line",
        description="Record a delivery and enqueue it. An existing --id or --dedup-key creates nothing and "
        "prints the existing id. Refused (exit 1) while the queue is over ALERT_MAX_QUEUE_DEPTH.",
    )
    send.add_argument("--channel", required=True, choices=["email", "slack", "sms"])
    send.add_argument("--to", required=True, help="e-mail address, Slack webhook URL (or 'default'), E.164 number")
    send.add_argument("--subject", default="")
    send.add_argument("--body", default="")
    send.add_argument("--id", help="delivery id (idempotency key); default a new UUID")
    send.add_argument("--queue", help="RQ queue; default the first of RQ_QUEUES")
    send.add_argument("--alert-id", help="grouping id from the producer")
    send.add_argument("--dedup-key", help="producer dedup key; a second send with it creates nothing")

    status = sub.add_parser("status", help="show one delivery (never its payload); with no id, the overview")
    status.add_argument("id", nargs="?", help="delivery id; omit for the one-screen overview (docs/contract.md §6.4)")
    status.add_argument("--json", action="store_true", help="print JSON")

    poison = sub.add_parser("poison", help="list, replay or resolve parked deliveries")
    psub = poison.add_subparsers(dest="poison_command", metavar="ACTION", required=True)
    plist = psub.add_parser("list", help="list poisoned deliveries, newest first")
    plist.add_argument("--channel", choices=["email", "slack", "sms"])
    plist.add_argument("--since", type=parse_since, help="poisoned since: 30m, 2h, 7d or an ISO time")
    plist.add_argument("--limit", type=_positive, default=50)
    plist.add_argument("--json", action="store_true", help="print JSON")
    replay = psub.add_parser(
        "replay",
        help="send poisoned deliveries again (back to pending, attempts 0, enqueued once)",
        description="Move poisoned deliveries back to pending with attempts 0 and enqueue each once. "
        "Replaying again before they fail again does nothing.",
    )
    replay.set_defaults(replay_parser=replay)  # its own usage line on a usage error found after parsing
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", default=[], metavar="ID")
    which.add_argument("--all", action="store_true", help="every replayable poisoned delivery (see filters)")
    replay.add_argument("--channel", choices=["email", "slack", "sms"], help="with --all: only this channel")
    replay.add_argument("--since", type=parse_since, help="with --all: poisoned since 30m, 2h, 7d or an ISO time")
    replay.add_argument("--dry-run", action="store_true", help="print what would be replayed; change nothing")
    replay.add_argument("--json", action="store_true", help="print JSON")
    resolve = psub.add_parser("resolve", help="give up on poisoned deliveries: status failed, payload erased")
    resolve.add_argument("ids", nargs="+", metavar="ID")
    resolve.add_argument("--note", help="replaces the stored error (sanitized)")

    release = sub.add_parser(
        "release",
        help="send a recipient's held deliveries now, in one message past the limit; prints `carried N`",
        description="Send the deliveries held for one recipient (by its per-recipient limit or a cooldown) now, "
        "in one message that passes the per-recipient limit once: the oldest held delivery carries the others "
        "(at most ALERT_DIGEST_MAX_ITEMS). A worker sends it; this waits for the outcome. The last line is "
        "`carried N` (N = every delivery that message delivered, the carrier included; 0 when nothing is held).",
    )
    release.add_argument("--channel", required=True, choices=["email", "slack", "sms"])
    release.add_argument("--to", required=True, help="the recipient, as given to send (any variant of it)")
    release.add_argument("--timeout", type=_positive, default=60, help="seconds to wait for the worker (default 60)")
    release.add_argument("--json", action="store_true", help='print {"carried": N, "delivery_id": ID}')

    sweep = sub.add_parser("sweep", help="re-enqueue overdue and stuck deliveries once (for cron/systemd timers)")
    sweep.add_argument("--json", action="store_true", help="print JSON")
    add_suppression_parser(sub)
    cooldown = sub.add_parser("cooldown", help="list or end fleet-wide cooldowns (a provider asked to slow down)")
    csub = cooldown.add_subparsers(dest="cooldown_command", metavar="ACTION", required=True)
    clist = csub.add_parser("list", help="running cooldowns: channel, hash, masked destination, seconds left")
    clist.add_argument("--channel", choices=["email", "slack", "sms"])
    clist.add_argument("--json", action="store_true", help="print a JSON array")
    clear = csub.add_parser("clear", help="end cooldowns now, so held deliveries go at their next try (idempotent)")
    clear.add_argument("--channel", required=True, choices=["email", "slack", "sms"])
    target = clear.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--to", help="the destination: a Slack webhook URL or 'default', SMTP host:port, Twilio ACCOUNT_SID:+FROM"
    )
    target.add_argument("--hash", help="the destination hash `cooldown list` prints")
    target.add_argument("--all", action="store_true", help="every cooldown of the channel")
    check = sub.add_parser(
        "check",
        help="check Postgres, Redis, the scheduler and channels; exit 0 when both answer",
        description="Check Postgres, Redis, the RQ scheduler lock and the channels. A plain RQ worker must run "
        "as `rq worker --with-scheduler --disable-job-desc-logging` (job descriptions carry recipients).",
    )
    check.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _undecodable(argv: list[str]) -> list[int]:
    """Positions of the arguments that were not valid UTF-8 (Python keeps their bytes as lone surrogates)."""
    bad = []
    for index, arg in enumerate(argv):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            bad.append(index)
    return bad


_PLACEHOLDER = "alert-worker-undecodable-argument"


def undecodable_argument_name(argv: list[str], index: int) -> str:
    """Which argument ``argv[index]`` is (``--body``, ``ID``, ``argument 3``), never its value (§7.6).

    The arguments are parsed with every undecodable one replaced by a placeholder; the option that took the
    placeholder names it. When that parse fails, the option written just before it (or in ``--opt=``) does.
    """
    arg = argv[index]
    if arg.startswith("--") and "=" in arg and not _undecodable([arg.partition("=")[0]]):
        return arg.partition("=")[0]
    if arg.startswith("-"):  # an option's own name is undecodable
        return f"argument {index + 1}"
    clean = [_PLACEHOLDER if _undecodable([a]) else a for a in argv]
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            parsed = vars(build_parser().parse_args(clean))
    except SystemExit:
        parsed = {}
    for dest, value in parsed.items():
        values = value if isinstance(value, list) else [value]
        if _PLACEHOLDER in values:
            option = f"--{dest.replace('_', '-')}"
            return option if option in argv else dest.upper()
    before = argv[index - 1] if index > 0 else ""
    if before.startswith("-") and not _undecodable([before]) and "=" not in before:
        return before
    return f"argument {index + 1}"


def main(argv: list[str] | None = None) -> int:
    """``alert-worker`` and ``python -m alert_worker``; ``entrypoint.main`` is an alias."""
    argv = sys.argv[1:] if argv is None else argv
    bad = _undecodable(argv)
    if bad:
        name = undecodable_argument_name(argv, bad[0])
        print(f"alert-worker: error: {name}: not valid UTF-8 (value not shown)", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or "run"
    if getattr(args, "poison_command", None) == "replay" and args.ids and (args.channel or args.since):
        args.replay_parser.error("--channel and --since go with --all, not with IDs")
    is_worker = command == "run"
    try:
        settings = Settings.from_env()
    except ConfigurationError as exc:
        configure_logging("json", stream=None if is_worker else sys.stderr)
        structlog.get_logger("alert_worker.cli").error("configuration_invalid", error=str(exc))
        return 1
    if is_worker:
        from alert_worker.worker import run_worker

        return run_worker(settings, burst=bool(args.burst), worker_class=args.worker_class, threads=args.threads)
    configure_logging(settings.log_format, settings.log_level, stream=sys.stderr, rq_level=settings.rq_log_level)
    from alert_worker.commands import run_command

    return run_command(command, args, settings)
