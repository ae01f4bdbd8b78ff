"""The benchmark script still runs end to end (tiny sizes: ceiling and per-job scope on SimpleWorker)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAST_LINE = re.compile(
    r"bench: per_job_vs_reference=(\d+\.\d\d|n/a) process_vs_ceiling=(\d+\.\d\d|n/a) "
    r"plain_vs_preloaded=(\d+\.\d\d|n/a) p99_ms=(\d+\.\d|nan)"
)


@pytest.mark.integration
def test_bench_runs_the_ceiling_and_per_job_cases_and_ends_with_the_summary_line() -> None:
    """20 jobs per case, one round: exit 0, a table row per case, the summary line last."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.run", "--jobs", "20", "--rounds", "1"),
            "--latency-jobs",
            "10",
            "--cases",
            "a-simple,b-simple",
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
    assert all(float(row.split("|")[3]) > 0 for row in rows), rows
