"""``python -m tests.cluster [--deliveries N]``: the cluster suite (root; network namespaces).

Runs the PgBouncer and Sentinel tests (pytest, tests/cluster/test_pgbouncer.py and test_sentinel.py),
then the namespace scenarios (partition, slow link) with three worker hosts. The last line is
``cluster-suite: hosts=3 deliveries=N lost=L duplicates=D forced=F pgbouncer=ok|fail sentinel=ok|fail``.
Exit 0 when every part passed, 1 when one failed, 77 (skipped) without root or ``ip netns``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from tests.cluster import netns
from tests.cluster.scenarios import Outcome, run_scenario
from tests.cluster.services import Services
from tests.support.processes import REPO


def _pytest(path: str) -> bool:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", path], cwd=REPO, check=False)
    return done.returncode == 0


def _scenarios(deliveries: int) -> tuple[list[Outcome], list[str]]:
    """The three scenarios on the namespaces (held exclusively); what was left behind afterwards."""
    outcomes: list[Outcome] = []
    with netns.exclusive():
        netns.create()
        try:
            services = Services()
            try:
                services.start()
                for fault in ("none", "partition", "slow"):
                    outcome = run_scenario(fault, deliveries=deliveries, services=services)
                    print(outcome.line(), flush=True)
                    outcomes.append(outcome)
            finally:
                services.close()
        finally:
            netns.cleanup()
        return outcomes, netns.leftovers()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster")
    parser.add_argument("--deliveries", type=int, default=300, help="deliveries per scenario")
    args = parser.parse_args(argv)
    reason = netns.unavailable_reason()
    if reason is not None:
        print(f"cluster-suite: skipped: {reason}")
        return 77
    pgbouncer_ok = _pytest("tests/cluster/test_pgbouncer.py")
    sentinel_ok = _pytest("tests/cluster/test_sentinel.py")
    try:
        outcomes, left = _scenarios(args.deliveries)
    except netns.Busy as exc:
        print(f"cluster-suite: skipped: {exc}")
        return 77
    if left:
        print(f"cluster-suite: left behind: {left}")
    total = Outcome(fault="all")
    for o in outcomes:
        total.deliveries += o.deliveries
        total.lost += o.lost
        total.duplicates += o.duplicates
        total.forced += o.forced
    ok = pgbouncer_ok and sentinel_ok and not left and all(o.ok for o in outcomes)
    print(
        f"cluster-suite: hosts={netns.HOSTS} deliveries={total.deliveries} lost={total.lost} "
        f"duplicates={total.duplicates} forced={total.forced} pgbouncer={'ok' if pgbouncer_ok else 'fail'} "
        f"sentinel={'ok' if sentinel_ok else 'fail'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
