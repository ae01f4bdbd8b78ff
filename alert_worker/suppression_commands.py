"""``alert-worker suppression list|add|remove``: the operator's side of the suppression list.

Thin: argument handling and printing only; ``SuppressionStore`` does the SQL. ``add`` and ``remove``
are idempotent (exit 0 either way, and say which). A recipient is hashed exactly as a delivery to it is
(``suppression_key``), so an entry added here holds the next delivery to that recipient. ``remove --hash``
takes the hash ``list`` prints, so lifting an entry needs neither the recipient nor any channel setting.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from alert_worker.settings import Settings
from alert_worker.suppression import SuppressionStore, suppression_key
from alert_worker.validation import SLACK_DEFAULT_RECIPIENTS

if TYPE_CHECKING:  # the CLI parser imports this module; the database modules load only when a command runs
    from alert_worker.store import DeliveryStore

CHANNELS = ("email", "slack", "sms")
_HASH = re.compile(r"[0-9a-f]{16}")  # alert_worker.redaction.recipient_hash


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
    target = remove.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", help="the recipient, as for add")
    target.add_argument("--hash", help="the recipient hash `suppression list` prints (needs no channel settings)")


@contextmanager
def _suppressions(settings: Settings) -> Iterator[tuple[SuppressionStore, DeliveryStore]]:
    from alert_worker.console import reachable_database
    from alert_worker.resources import open_job_pool
    from alert_worker.store import DeliveryStore

    if not settings.database_url:
        raise SuppressionCommandError("DATABASE_URL is not set")
    reachable_database(settings)  # one direct connection first: fail in about a second with one line
    pool = open_job_pool(settings)
    try:
        yield SuppressionStore(source=pool), DeliveryStore(pool=pool)
    finally:
        pool.close()


def _key(store: DeliveryStore, settings: Settings, channel: str, recipient: str) -> tuple[str, str]:
    if not recipient.strip() and channel != "slack":
        raise SuppressionCommandError("--to must not be empty")
    if channel == "slack" and recipient.strip() in SLACK_DEFAULT_RECIPIENTS and not settings.slack.default_webhook_url:
        raise SuppressionCommandError(
            "--to default means SLACK_WEBHOOK_URL, which is not set here: set it as the workers have it, "
            "or give --hash HASH as `alert-worker suppression list` prints it"
        )
    secret = store.recipient_hash_secret(settings.recipient_hash_secret)
    return suppression_key(secret, channel, recipient, default_webhook_url=settings.slack.default_webhook_url)


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    with _suppressions(settings) as (suppressions, _):
        entries = suppressions.list(args.channel)
    if args.json:
        print(json.dumps([e.as_json() for e in entries]), flush=True)
        return 0
    if not entries:
        print("no suppressed recipients", flush=True)
        return 0
    from alert_worker.console import show, table

    cells = [
        (
            e.channel,
            e.recipient_hash,
            show(e.recipient),
            show(e.created_at),
            show(e.source_delivery_id or "operator"),
            show(e.reason),
        )
        for e in entries
    ]
    for line in table(("CHANNEL", "HASH", "RECIPIENT", "CREATED AT", "SOURCE", "REASON"), cells):
        print(line, flush=True)
    return 0


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    with _suppressions(settings) as (suppressions, store):
        rhash, masked = _key(store, settings, args.channel, args.to)
        added = suppressions.add(channel=args.channel, rhash=rhash, masked=masked, reason=args.reason)
    print(f"{'suppressed' if added else 'already suppressed'}: {args.channel} {masked}", flush=True)
    return 0


def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    """By ``--to`` (hashed as a delivery is) or by ``--hash`` (as listed: no secret, no channel settings)."""
    if args.hash is not None and not _HASH.fullmatch(args.hash.strip().lower()):
        raise SuppressionCommandError("--hash must be the 16 hex characters `alert-worker suppression list` prints")
    with _suppressions(settings) as (suppressions, store):
        if args.hash is not None:
            rhash = shown = args.hash.strip().lower()
        else:
            rhash, shown = _key(store, settings, args.channel, args.to)
        removed = suppressions.remove(args.channel, rhash)
    print(f"{'removed' if removed else 'not suppressed'}: {args.channel} {shown}", flush=True)
    return 0


# What happens after an attempt with no answer, per channel: only SMS can be looked up at the provider.
UNKNOWN_OUTCOME_NEXT = {
    "sms": "an attempt with no answer: Twilio is asked for the message before any resend",
    "email": "an attempt with no answer: it is sent again (same Message-ID, so a mailbox may fold a duplicate)",
    "slack": "an attempt with no answer: it is posted again (a duplicate message is possible)",
}


def held_by(error_message: str | None, channel: str = "") -> str | None:
    """For ``status ID``: which provider-feedback rule holds the delivery, and what the operator can do."""
    text = error_message or ""
    if text.startswith("suppressed: "):
        return "the suppression list: lift it with `alert-worker suppression remove`, then `poison replay`"
    if text.startswith("rate_limited: cooldown"):
        return "a fleet-wide cooldown (the provider asked to slow down); it resumes by itself"
    if text.startswith("channel_paused: "):
        return (
            "a fleet-wide channel pause: the provider refused the channel's own settings; fix them, and the "
            "delivery is sent when the pause ends (docs/operations.md, 'A channel is paused')"
        )
    if text.startswith("outcome_unknown: twilio lookup failed"):
        return "Twilio could not be asked whether the earlier attempt went out; it is asked again before any resend"
    if text.startswith("rate_limited: recipient limit"):
        return (
            "the recipient's per-recipient limit: the next message to this recipient carries it "
            "(`alert-worker release` sends it now)"
        )
    if text.startswith("outcome_unknown:"):
        return UNKNOWN_OUTCOME_NEXT.get(channel, "an attempt with no answer: it is tried again")
    return None


SUPPRESSION_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "suppression list": cmd_list,
    "suppression add": cmd_add,
    "suppression remove": cmd_remove,
}
