"""``python -m tests.crash [--full] [--only NAME ...]``: run the crash-consistency suite and print its figures.

The last line is ``crash-suite: deliveries=N kills=K restarts=R lost=L duplicates=D max_window_rate=X limit=Y``.
Exit status 1 when anything was lost, when there are more duplicates than faults that struck between the
provider's acceptance and the row write (``forced``), when the provider saw more than the rate limit in a
rolling minute, or when any scenario's own assertions failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import structlog

from tests.crash.harness import Cluster, Outcome
from tests.crash.scenarios import FULL, SCENARIOS, SMALL, THREADED_ONLY


def summary(outcomes: list[Outcome]) -> tuple[str, list[str]]:
    """The last line, and every reason the run fails."""
    total = Outcome("crash-suite")
    for o in outcomes:
        total.deliveries += o.deliveries
        total.kills += o.kills
        total.forced += o.forced
        total.restarts += o.restarts
        total.lost += o.lost
        total.duplicates += o.duplicates
        if o.limit:
            total.max_window_rate = max(total.max_window_rate, o.max_window_rate)
            total.limit = o.limit
    reasons = [f"{o.name}: {f}" for o in outcomes for f in o.failures]
    if total.lost:
        reasons.append(f"lost={total.lost}")
    if total.duplicates > total.forced:
        reasons.append(f"duplicates={total.duplicates} exceed the accepted-not-written faults ({total.forced})")
    if total.max_window_rate > total.limit:
        reasons.append(f"max_window_rate={total.max_window_rate} exceeds limit={total.limit}")
    line = (
        f"crash-suite: deliveries={total.deliveries} kills={total.kills} restarts={total.restarts} "
        f"lost={total.lost} duplicates={total.duplicates} max_window_rate={total.max_window_rate} "
        f"limit={total.limit}"
    )
    return line, reasons


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.crash", description=__doc__)
    parser.add_argument("--full", action="store_true", help="the full sizes (about 5-10 minutes)")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run just these scenarios")
    parser.add_argument(
        "--worker",
        choices=["threaded", "forking", "rq"],
        help="the worker kind every scenario runs (default CRASH_WORKER, else threaded); the same judge for all",
    )
    args = parser.parse_args(argv)
    if args.worker:
        os.environ["CRASH_WORKER"] = args.worker
    # SIGTERM unwinds like Ctrl-C, so every private server and worker is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    scale = FULL if args.full else SMALL
    outcomes: list[Outcome] = []
    kind = os.environ.get("CRASH_WORKER", "threaded")
    print(f"crash-suite: worker={kind} scale={'full' if args.full else 'small'}", flush=True)
    with Cluster() as cluster:
        for name, scenario in SCENARIOS.items():
            if args.only and name not in args.only:
                continue
            if name in THREADED_ONLY and kind != "threaded" and not args.only:
                print(f"{name}: skipped (kills a threaded worker; this run's worker is {kind})", flush=True)
                continue
            outcome = scenario(cluster, scale)
            outcomes.append(outcome)
            print(outcome.line(), outcome.notes, flush=True)
            for failure in outcome.failures[:20]:
                print(f"  FAILED {failure}", flush=True)
    line, reasons = summary(outcomes)
    for reason in reasons[:50]:
        print(f"FAILED {reason}", file=sys.stderr, flush=True)
    print(line, flush=True)
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main())
