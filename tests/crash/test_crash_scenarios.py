"""The crash-consistency scenarios at CI size (``python -m tests.crash --full`` runs them large).

Each runs real worker processes (``CRASH_WORKER``: threaded by default, forking, or plain ``rq worker``;
the same judge for all) against private PostgreSQL and Redis servers and loopback providers, injects its
fault mid-burst and polls until every row is terminal.
"""

from __future__ import annotations

import pytest

from tests.crash.harness import Cluster
from tests.crash.jobs import BOUNDARIES
from tests.crash.scenarios import (
    SMALL,
    kill_at_boundaries,
    postgres_outage,
    postgres_silent,
    provider_hang,
    provider_slow_answer,
    rate_limit_burst,
    redis_restart,
    storm_carry,
    threaded_kill_in_flight,
    transient_failures,
    worker_kills,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_transient_failures_end_as_scripted_and_each_delivered_row_is_accepted_once(cluster: Cluster) -> None:
    """20 % transient failures over 3 workers: delivered or poison as scripted, never a duplicate."""
    outcome = transient_failures(cluster, SMALL)
    assert outcome.failures == []
    assert (outcome.lost, outcome.duplicates) == (0, 0)
    assert outcome.notes["transient_scripted"] > 0


@pytest.mark.parametrize("worker", ["threaded", "forking", "rq"], ids=["threaded", "forking", "plain-rq-worker"])
def test_a_work_horse_killed_at_any_boundary_still_ends_delivered(
    cluster: Cluster, worker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL at each boundary: all delivered after the sweep; one duplicate per kill after the send, else none."""
    monkeypatch.setenv("CRASH_WORKER", worker)  # plain `rq worker -s`: the suite's thread is the sweeper
    outcome = kill_at_boundaries(cluster, SMALL)
    assert outcome.failures == []
    assert outcome.notes["kills_by_boundary"] == {b: SMALL.per_boundary for b in BOUNDARIES}
    assert outcome.lost == 0
    assert outcome.duplicates == outcome.forced == SMALL.per_boundary


def test_whole_workers_killed_or_warm_stopped_mid_burst_lose_nothing(cluster: Cluster) -> None:
    """kill -9 of parent and horse, and SIGTERM warm shutdowns: nothing lost, duplicates only from kills."""
    outcome = worker_kills(cluster, SMALL)
    assert outcome.failures == []
    assert outcome.kills == SMALL.worker_kills
    assert outcome.lost == 0
    assert outcome.duplicates <= outcome.notes["sigkill_in_flight"]
    assert outcome.restarts >= SMALL.worker_kills + SMALL.warm_stops


def test_redis_restarted_empty_mid_burst_is_recovered_from_postgres(cluster: Cluster) -> None:
    """Queued jobs and scheduled retries vanish with Redis; the sweep re-enqueues every row."""
    outcome = redis_restart(cluster, SMALL)
    assert outcome.failures == []
    assert (outcome.lost, outcome.duplicates) == (0, 0)
    assert outcome.notes["terminal_before_restart"] < SMALL.redis_n


@pytest.mark.parametrize("worker", ["threaded", "forking", "rq"], ids=["threaded", "forking", "plain-rq-worker"])
def test_a_postgres_outage_fails_jobs_loudly_and_loses_nothing_not_even_jobs_without_a_row(
    cluster: Cluster, worker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs fail loudly in RQ; rows and row-less producer jobs are all delivered once Postgres is back."""
    monkeypatch.setenv("CRASH_WORKER", worker)
    outcome = postgres_outage(cluster, SMALL)
    assert outcome.failures == []
    assert outcome.lost == 0
    assert outcome.notes["failed_jobs_db_error"] > 0
    assert outcome.notes["no_row_jobs"] == outcome.notes["no_row_failed_while_down"] == SMALL.orphan_n
    assert outcome.duplicates <= outcome.notes["failed_after_send"]


@pytest.mark.parametrize("worker", ["threaded", "forking", "rq"], ids=["threaded", "forking", "plain-rq-worker"])
def test_postgres_going_silent_mid_burst_ends_every_job_in_flight_and_loses_or_doubles_nothing(
    cluster: Cluster, worker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No RST, no answer: jobs in flight end within the job timeout + 15 s; healed, every row delivered once."""
    monkeypatch.setenv("CRASH_WORKER", worker)
    outcome = postgres_silent(cluster, SMALL)
    if "skipped" in outcome.notes:
        pytest.skip(outcome.notes["skipped"])
    assert outcome.failures == []
    assert (outcome.lost, outcome.duplicates) == (0, 0)
    assert outcome.notes["in_flight_at_silence"] > 0


def test_a_provider_hanging_past_the_send_timeout_is_retried_and_no_job_overruns(cluster: Cluster) -> None:
    """A hang longer than the send timeout is a transient failure; every job ends within job_timeout."""
    outcome = provider_hang(cluster, SMALL)
    assert outcome.failures == []
    assert (outcome.lost, outcome.duplicates) == (0, 0)


def test_an_sms_answer_slower_than_the_job_timeout_is_looked_up_not_resent(cluster: Cluster) -> None:
    """Cut off by the send deadline or by the job timeout: an unknown outcome, found at Twilio, one SMS each."""
    outcome = provider_slow_answer(cluster, SMALL)
    assert outcome.failures == []
    assert (outcome.lost, outcome.duplicates) == (0, 0)


def test_a_burst_over_the_rate_limit_is_all_sent_and_never_exceeds_it(cluster: Cluster) -> None:
    """Provider-side, no rolling 60 s window holds more sends than the per-minute limit."""
    outcome = rate_limit_burst(cluster, SMALL)
    assert outcome.failures == []
    assert outcome.lost == 0
    assert outcome.max_window_rate == outcome.limit == SMALL.rate_limit


def test_a_threaded_worker_killed_with_16_deliveries_in_flight_has_all_16_delivered_within_the_job_timeout(
    cluster: Cluster,
) -> None:
    """kill -9 mid-send: the dead-worker reclaim hands every row back within job timeout + two sweep intervals."""
    outcome = threaded_kill_in_flight(cluster, SMALL)
    assert outcome.failures == []
    assert (outcome.lost, outcome.duplicates) == (0, 0)
    assert outcome.notes["recovery_seconds"] <= outcome.notes["budget_seconds"] + 2.0


def test_an_alert_storm_killed_at_each_boundary_of_a_carrying_send_loses_nothing_and_never_doubles_unforced(
    cluster: Cluster,
) -> None:
    """§8: a storm to four recipients with a limit of 2 an hour, carrying sends killed at each boundary: every
    carried delivery in exactly one accepted message (its carrier's), duplicates only where a kill struck
    between the provider's acceptance and the writes."""
    outcome = storm_carry(cluster, SMALL)
    assert outcome.failures == []
    assert outcome.lost == 0
    assert outcome.duplicates == outcome.forced
    assert all(n >= 1 for n in outcome.notes["kills_by_boundary"].values())
    assert outcome.notes["delivered_via_rows"] > 0
