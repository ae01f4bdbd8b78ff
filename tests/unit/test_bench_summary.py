"""The bench's last line: which runs each figure divides, and how the Slack, peer and host cases are sized."""

from __future__ import annotations

import pytest

from bench.run import CaseResult, rounds_of, size_of, summary_line


def results(**rates: float) -> dict[str, CaseResult]:
    return {case.replace("_at", "@").replace("_", "-"): CaseResult(throughputs=[rate]) for case, rate in rates.items()}


def test_summary_line_names_every_figure_in_order_with_ours_over_the_faster_peer() -> None:
    runs = results(
        s_threads_at100=120.0,
        p_dramatiq_at100=150.0,
        p_celery_at100=160.0,
        s_threads=100.0,
        p_dramatiq=400.0,
        p_celery=250.0,
        s_threads2=150.0,
        b_threads_at100=140.0,
        b_threads=90.0,
        e_threads=100.0,
        b_fork=20.0,
        d_fork=16.0,
        b_plain=4.0,
    )
    runs["b-threads@100"].rss_kb = [60 * 1024, 70 * 1024]
    assert summary_line(runs, 100) == (
        "bench: threads_vs_best_peer_at_latency=0.75 threads_vs_best_peer=0.25 threads_jps_at_latency=140.0 "
        "rss_mb=70 overhead_vs_floor=0.90 host_scaling=1.50 p99_fork_vs_noop=n/a plain_vs_preloaded=0.20 "
        "fork_vs_reference=1.25"
    )


@pytest.mark.parametrize(
    "runs",
    [
        pytest.param(results(s_threads_at100=120.0), id="peers-not-run"),
        pytest.param({**results(s_threads_at100=120.0), "p-celery@100": CaseResult()}, id="peer-run-failed"),
        pytest.param(results(p_dramatiq_at100=150.0), id="ours-not-run"),
    ],
)
def test_peer_ratio_is_not_available_without_both_a_rate_of_ours_and_a_peers(runs: dict[str, CaseResult]) -> None:
    assert "threads_vs_best_peer_at_latency=n/a " in summary_line(runs, 100)


def test_host_scaling_is_not_available_when_one_of_its_runs_failed() -> None:
    runs = {**results(s_threads=100.0), "s-threads2": CaseResult()}
    assert " host_scaling=n/a " in summary_line(runs, 100)


@pytest.mark.parametrize(
    ("case", "peer_jobs", "jobs"),
    [
        pytest.param("s-threads@100", None, 400, id="ours-slack-at-latency"),
        pytest.param("p-celery@100", None, 400, id="peer-at-latency"),
        pytest.param("p-dramatiq", None, 1500, id="peer-at-zero"),
        pytest.param("s-threads2", None, 1500, id="two-processes-at-zero"),
        pytest.param("p-dramatiq", 40, 40, id="peer-jobs-option"),
        pytest.param("b-threads@100", 40, 160, id="threaded-e-mail-at-least-10-per-thread"),
        pytest.param("a-simple", 40, 30, id="others-the-jobs-option"),
    ],
)
def test_slack_and_peer_runs_queue_as_many_jobs_as_the_peers_were_measured_with(
    case: str, peer_jobs: int | None, jobs: int
) -> None:
    assert size_of(case, 30, peer_jobs) == jobs


@pytest.mark.parametrize(
    ("case", "rounds"),
    [
        pytest.param("p-celery", 2, id="peer-at-zero"),
        pytest.param("s-threads2", 2, id="ours-slack-at-zero"),
        pytest.param("s-threads@100", 3, id="slack-at-latency"),
        pytest.param("b-threads", 3, id="e-mail-at-zero"),
    ],
)
def test_the_long_runs_at_zero_latency_take_at_most_two_rounds(case: str, rounds: int) -> None:
    assert rounds_of(case, 3) == rounds
