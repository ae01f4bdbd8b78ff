"""The benchmark script still runs end to end (tiny sizes), with the peers' venv or without it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PEERS_PYTHON = REPO / "bench" / ".peers-venv" / "bin" / "python"
_RATIO = r"(\d+\.\d\d|n/a)"
LAST_LINE = re.compile(
    rf"bench: threads_vs_best_peer_at_latency={_RATIO} threads_vs_best_peer={_RATIO} "
    rf"threads_jps_at_latency=(\d+\.\d|nan) rss_mb=(\d+|nan) overhead_vs_floor={_RATIO} host_scaling={_RATIO} "
    rf"p99_fork_vs_noop={_RATIO} plain_vs_preloaded={_RATIO} fork_vs_reference={_RATIO}"
)


def run_bench(cases: str, *, peers_python: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BENCH_PEERS_PYTHON"}
    if peers_python is not None:
        env["BENCH_PEERS_PYTHON"] = peers_python
    return subprocess.run(
        [
            *(sys.executable, "-m", "bench.run", "--jobs", "20", "--rounds", "1", "--peer-jobs", "40"),
            *("--latency-jobs", "10", "--cases", cases),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def figure(line: str, name: str) -> str:
    found = re.search(rf"\b{name}=(\S+)", line)
    assert found, line
    return found.group(1)


def table_rows(stdout: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in stdout.splitlines() if line.startswith("| (")]


@pytest.mark.integration
def test_bench_without_the_peers_venv_skips_the_peer_cases_and_ends_with_the_summary_line(tmp_path: Path) -> None:
    """One round: exit 0, a table row per case run, the peers skipped with how to install them, the summary
    line last with the threaded and host-scaling figures filled in and the peer ratios n/a."""
    done = run_bench("a-simple,b-threads@100,p-dramatiq@100,s-threads,s-threads2", peers_python=str(tmp_path / "none"))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert LAST_LINE.fullmatch(lines[-1]), lines[-1]
    skipped = [line for line in lines if line.startswith("peers skipped (p-dramatiq@100)")]
    assert skipped and "bench/requirements-peers.txt" in skipped[0], lines
    rows = table_rows(done.stdout)
    assert [row[:2] for row in rows] == [
        ["(a) ceiling (RQ no-op)", "simple"],
        ["(b) per-job scope", "threads@100"],
        ["(s) per-job scope, Slack", "threads"],
        ["(s) per-job scope, Slack", "threads2"],
    ]
    assert all(float(row[2]) > 0 for row in rows), rows
    assert figure(lines[-1], "threads_jps_at_latency") != "nan"
    assert figure(lines[-1], "host_scaling") != "n/a"
    assert figure(lines[-1], "threads_vs_best_peer_at_latency") == "n/a"


@pytest.mark.integration
@pytest.mark.skipif(not PEERS_PYTHON.is_file(), reason="no peers venv (bench/.peers-venv); see docs/performance.md")
def test_bench_runs_dramatiq_and_celery_against_our_slack_case_and_reports_ours_over_the_faster() -> None:
    done = run_bench("s-threads@100,p-dramatiq@100,p-celery@100")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert LAST_LINE.fullmatch(lines[-1]), lines[-1]
    rows = {row[1]: float(row[2]) for row in table_rows(done.stdout)}
    assert set(rows) == {"threads@100", "dramatiq@100", "celery@100"}, rows
    assert all(rate > 0 for rate in rows.values()), rows
    expected = rows["threads@100"] / max(rows["dramatiq@100"], rows["celery@100"])
    assert float(figure(lines[-1], "threads_vs_best_peer_at_latency")) == pytest.approx(expected, abs=0.01)


def python_holding(megabytes: int, seconds: float) -> str:
    return f"import time; held = bytearray({megabytes} * 1024 * 1024); time.sleep({seconds})"


@pytest.mark.integration
def test_bench_reports_a_workers_own_peak_rss_not_the_bench_processes() -> None:
    """A spawned child's ``wait4`` peak starts at its parent's RSS; the bench reads the child's own."""
    from bench.run import Bench

    held = bytearray(300 * 1024 * 1024)  # the bench process: far larger than the worker
    held[::4096] = b"\1" * len(held[::4096])
    worker = subprocess.Popen([sys.executable, "-c", python_holding(40, 1.0)])
    peak_mb = Bench.reap(worker, timeout=60) / 1024
    assert 40 <= peak_mb < 150, peak_mb
    del held


@pytest.mark.integration
def test_bench_counts_a_workers_child_processes_in_its_peak_rss() -> None:
    """A worker whose child (a work-horse, Dramatiq's worker process) holds the memory reports the child's."""
    from bench.run import Bench

    worker = subprocess.Popen(["sh", "-c", f'"{sys.executable}" -c "{python_holding(80, 1.5)}"'])
    assert Bench.reap(worker, timeout=60) / 1024 >= 80
