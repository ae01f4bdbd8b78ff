"""``alert-worker suppression list|add|remove``: the operator's side of the suppression list.

Thin: argument handling and printing only; ``SuppressionStore`` does the SQL. ``add`` and ``remove``
are idempotent (exit 0 either way, and say which). A recipient is hashed exactly as a delivery to it is
(``suppression_key``), so an entry added here holds the next delivery to that recipient.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from alert_worker.settings import Settings
from alert_worker.suppression import SuppressionStore, suppression_key

if TYPE_CHECKING:  # the CLI parser imports this module; the database modules load only when a command runs
    from alert_worker.store import DeliveryStore

CHANNELS = ("email", "slack", "sms")


class SuppressionCommandError(Exception):
    """Print on stderr, exit 1."""


class Subcommands(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns, as far as this module uses it (its class is private)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def add_suppression_parser(sub: Subcommands) -> None:
    """The ``suppression`` command group, added to the CLI's subparsers."""
    group = sub.add_parser("suppression", help="list, add or remove suppressed recipients")
    ssub = group.add_subparsers(dest="suppression_command", metavar="ACTION", required=True)
    slist = ssub.add_parser("list", help="suppressed recipients (masked), newest first")
    slist.add_argument("--channel", choices=CHANNELS)
    slist.add_argument("--json", action="store_true", help="print a JSON array")
    add = ssub.add_parser("add", help="suppress a recipient: its deliveries are poisoned unsent (idempotent)")
    add.add_argument("--channel", required=True, choices=CHANNELS)
    add.add_argument("--to", required=True, help="e-mail address, Slack webhook URL or E.164 number")
    add.add_argument("--reason", required=True)
    remove = ssub.add_parser("remove", help="lift a suppression (idempotent)")
    remove.add_argument("--channel", required=True, choices=CHANNELS)
    remove.add_argument("--to", required=True)


@contextmanager
def _suppressions(settings: Settings) -> Iterator[tuple[SuppressionStore, DeliveryStore]]:
    from alert_worker.resources import open_job_pool
    from alert_worker.store import DeliveryStore

    if not settings.database_url:
        raise SuppressionCommandError("DATABASE_URL is not set")
    pool = open_job_pool(settings)
    try:
        yield SuppressionStore(source=pool), DeliveryStore(pool=pool)
    finally:
        pool.close()


def _key(store: DeliveryStore, settings: Settings, channel: str, recipient: str) -> tuple[str, str]:
    if not recipient.strip() and channel != "slack":
        raise SuppressionCommandError("--to must not be empty")
    secret = store.recipient_hash_secret(settings.recipient_hash_secret)
    return suppression_key(secret, channel, recipient, default_webhook_url=settings.slack.default_webhook_url)


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    with _suppressions(settings) as (suppressions, _):
        entries = suppressions.list(args.channel)
    from alert_worker.console import show

    if args.json:
        print(json.dumps([e.as_json() for e in entries]), flush=True)
        return 0
    if not entries:
        print("no suppressed recipients", flush=True)
    for e in entries:
        source = show(e.source_delivery_id or "operator")
        line = f"{e.channel:<6} {show(e.recipient):<32} {e.created_at.isoformat()} {source}  {show(e.reason)}"
        print(line, flush=True)
    return 0


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    with _suppressions(settings) as (suppressions, store):
        rhash, masked = _key(store, settings, args.channel, args.to)
        added = suppressions.add(channel=args.channel, rhash=rhash, masked=masked, reason=args.reason)
    print(f"{'suppressed' if added else 'already suppressed'}: {args.channel} {masked}", flush=True)
    return 0


def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    with _suppressions(settings) as (suppressions, store):
        rhash, masked = _key(store, settings, args.channel, args.to)
        removed = suppressions.remove(args.channel, rhash)
    print(f"{'removed' if removed else 'not suppressed'}: {args.channel} {masked}", flush=True)
    return 0


def held_by(error_message: str | None) -> str | None:
    """For ``status ID``: which provider-feedback rule holds the delivery, and what the operator can do."""
    text = error_message or ""
    if text.startswith("suppressed: "):
        return "the suppression list: lift it with `alert-worker suppression remove`, then `poison replay`"
    if text.startswith("rate_limited: cooldown"):
        return "a fleet-wide cooldown (the provider asked to slow down); it resumes by itself"
    if text.startswith("outcome_unknown:"):
        return "an attempt with no answer: SMS is looked up at Twilio before any resend"
    return None


SUPPRESSION_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "suppression list": cmd_list,
    "suppression add": cmd_add,
    "suppression remove": cmd_remove,
}
