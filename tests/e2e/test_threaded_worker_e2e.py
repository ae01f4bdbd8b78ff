"""``alert-worker run`` as a real process: the thread-pooled worker's start-up, drain and exits."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import psycopg
import pytest
import redis

from alert_worker.producer import send_alert
from alert_worker.settings import Settings
from tests.integration.counting_sink import CountingSink, running_counting_sink
from tests.support.cli import WorkerProcess, run_cli, worker_process
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def counting_sink() -> Iterator[CountingSink]:
    with running_counting_sink() as sink:
        yield sink


def _exit_code(worker: WorkerProcess, timeout: float = 60) -> int:
    try:
        return worker.process.wait(timeout=timeout)
    except Exception:
        pytest.fail(f"worker did not exit:\n{worker.text()[-4000:]}")


def _statuses(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM alert_deliveries GROUP BY status").fetchall())


@pytest.mark.parametrize(
    ("args", "env"),
    [(["run", "--threads", "0"], {}), (["run", "--threads", "65"], {}), (["run"], {"ALERT_WORKER_THREADS": "100"})],
    ids=["flag-0", "flag-65", "env-100"],
)
def test_a_thread_count_outside_1_to_64_exits_1_with_one_logged_reason(
    worker_env: dict[str, str], args: list[str], env: dict[str, str]
) -> None:
    """Refused before anything starts: exit 1 and exactly one JSON line, naming the setting."""
    done = run_cli(args, {**worker_env, **env})
    lines = [json.loads(line) for line in (done.stdout + done.stderr).strip().splitlines()]
    assert done.returncode == 1
    assert len(lines) == 1 and lines[0]["event"] == "configuration_invalid"
    assert "1..64" in lines[0]["error"]


def test_sigterm_lets_every_delivery_in_flight_finish_then_exits_0_and_unregisters(
    worker_env: dict[str, str], counting_sink: CountingSink, database_url: str, redis_client: redis.Redis
) -> None:
    """Three sends in flight on four threads; SIGTERM; the gate opens: all three delivered, no new job taken,
    exit 0, and the worker's registration and alive key are gone."""
    env = {**worker_env, "SMTP_PORT": str(counting_sink.port)}
    settings = Settings.from_env(env)
    with worker_process(["run", "--threads", "4"], env) as worker:
        wait_until(lambda: bool(redis_client.keys("alert:worker:*:alive")), timeout=60, what="the registration")
        for i in range(3):
            send_alert("email", f"ops{i}@example.com", "s", "b", delivery_id=f"drain-{i}", settings=settings)
        wait_until(lambda: counting_sink.inside == 3, timeout=60, what="three sends in flight")
        worker.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "warm_stop_requested" in worker.text(), timeout=30, what="the warm shutdown")
        send_alert("email", "late@example.com", "s", "b", delivery_id="late", settings=settings)
        counting_sink.gate.set()
        assert _exit_code(worker) == 0, worker.text()[-4000:]
    assert _statuses(database_url) == {"delivered": 3, "pending": 1}
    assert len(counting_sink.accepted) == 3
    assert redis_client.keys("alert:worker:*") == []


def test_a_second_sigterm_exits_at_once_leaving_the_delivery_for_the_dead_worker_reclaim(
    worker_env: dict[str, str], counting_sink: CountingSink, database_url: str
) -> None:
    """Cold stop mid-send: the process exits without waiting for the send; the row stays claimed by it."""
    env = {**worker_env, "SMTP_PORT": str(counting_sink.port), "ALERT_JOB_TIMEOUT_SECONDS": "50"}
    settings = Settings.from_env(env)
    with worker_process(["run", "--threads", "2"], env) as worker:
        send_alert("email", "ops@example.com", "s", "b", delivery_id="cold", settings=settings)
        wait_until(lambda: counting_sink.inside == 1, timeout=60, what="the send in flight")
        worker.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "warm_stop_requested" in worker.text(), timeout=30, what="the warm shutdown")
        worker.process.send_signal(signal.SIGINT)
        assert _exit_code(worker, timeout=20) != 0
    assert _statuses(database_url) == {"in_progress": 1}
    assert counting_sink.accepted == []
