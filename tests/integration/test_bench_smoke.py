"""The benchmark script still runs end to end (tiny sizes: the ceiling, and the threaded worker at 100 ms)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_RATIO = r"(\d+\.\d\d|n/a)"
LAST_LINE = re.compile(
    rf"bench: threads_vs_reference_at_latency={_RATIO} threads_jps_at_latency=(\d+\.\d|nan) rss_mb=(\d+|nan) "
    rf"overhead_vs_floor={_RATIO} fork_vs_reference={_RATIO} p99_fork_vs_noop={_RATIO} plain_vs_preloaded={_RATIO}"
)


@pytest.mark.integration
def test_bench_runs_the_ceiling_and_per_job_cases_and_ends_with_the_summary_line() -> None:
    """One round: exit 0, a table row per case, the summary line last with the threaded figures filled in."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.run", "--jobs", "20", "--rounds", "1"),
            "--latency-jobs",
            "10",
            "--cases",
            "a-simple,b-threads@100",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert LAST_LINE.fullmatch(lines[-1]), lines[-1]
    rows = [line for line in lines if line.startswith("| (")]
    assert [row.split("|")[1].strip() for row in rows] == ["(a) ceiling (RQ no-op)", "(b) per-job scope"]
    assert [row.split("|")[2].strip() for row in rows] == ["simple", "threads@100"]
    assert "threads_jps_at_latency=nan" not in lines[-1]
    assert all(float(row.split("|")[3]) > 0 for row in rows), rows
