"""``alert-worker``: run the worker (default), migrate, send, sweep."""

from __future__ import annotations

import argparse
import sys

from alert_worker.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alert-worker", description="Deliver alerts from RQ jobs.")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the worker (the default command)")
    run.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    run.add_argument("--worker-class", default="rq.worker.Worker", help="RQ worker class (import path)")
    sub.add_parser("migrate", help="create or update the database schema (idempotent)")
    send = sub.add_parser("send", help="record a delivery and enqueue it; prints its id last")
    send.add_argument("--channel", required=True, choices=["email", "slack", "sms"])
    send.add_argument("--to", required=True)
    send.add_argument("--subject", default="")
    send.add_argument("--body", default="")
    send.add_argument("--id")
    send.add_argument("--queue")
    send.add_argument("--alert-id")
    send.add_argument("--dedup-key")
    sub.add_parser("sweep", help="re-enqueue overdue and stuck deliveries once")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    settings = Settings.from_env()
    if command == "run":
        from alert_worker.worker import run_worker

        return run_worker(
            settings, burst=getattr(args, "burst", False), worker_class=getattr(args, "worker_class", None)
        )
    if command == "migrate":
        from alert_worker.entrypoint import closing_resources, open_job_resources
        from alert_worker.store import DeliveryStore

        with closing_resources(open_job_resources(settings)) as res:
            DeliveryStore(pool=res.pool).migrate()
        print("migrated")
        return 0
    if command == "send":
        from alert_worker.producer import send_alert

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
        if not outcome.created:
            print("already exists; nothing enqueued", file=sys.stderr)
        print(outcome.delivery_id)
        return 0
    if command == "sweep":
        from alert_worker.worker import sweep_now

        return sweep_now(settings)
    return 2
