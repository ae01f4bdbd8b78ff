"""The worker process keeps its scheduler, takes its children with it, and fails start-up in one line
(docs/contract.md §7.3, §7.5): real ``alert-worker run`` processes, a private Redis for the outage."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
import redis
from rq import Queue

from alert_worker.entrypoint import execute_delivery_job
from tests.crash.private_services import PrivateRedis
from tests.support.cli import run_cli, worker_process
from tests.support.processes import free_port, wait_until
from tests.support.smtp import SmtpSink

pytestmark = pytest.mark.e2e

KINDS = pytest.mark.parametrize(
    "kind_args", [["run"], ["run", "--worker-class", "rq.worker.Worker"]], ids=["threaded", "forking"]
)
LOCK = "rq:scheduler-lock:alerts"
OUTAGE_SECONDS = 12.0


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def _gone(pid: int) -> bool:
    """Exited (a zombie awaiting a reaper counts: it runs nothing and holds no socket)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _metrics_answer(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return bool(response.status == 200)


def _status(database_url: str, delivery_id: str) -> str | None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT status FROM alert_deliveries WHERE id = %s", (delivery_id,)).fetchone()
    return str(row[0]) if row else None


# -- 6b: kill -9 ---------------------------------------------------------------------------------------
@KINDS
def test_kill_9_of_the_worker_ends_its_scheduler_and_a_restart_binds_the_same_metrics_port(
    worker_env: dict[str, str], redis_client: redis.Redis, kind_args: list[str]
) -> None:
    port = free_port()
    env = {**worker_env, "ALERT_METRICS_PORT": str(port)}
    with worker_process(kind_args, env) as first:
        wait_until(lambda: bool(redis_client.exists(LOCK)), timeout=60, what="the first worker's scheduler lock")
        wait_until(lambda: _metrics_answer(port), timeout=30, what="the first worker's /metrics", ignore=(OSError,))
        children = _children(first.process.pid)
        assert children, "the scheduler runs in a child process"
        os.kill(first.process.pid, signal.SIGKILL)  # the worker alone, as a supervisor's kill -9 would
        first.process.wait(timeout=30)
        wait_until(lambda: all(_gone(pid) for pid in children), timeout=30, what="the worker's children to end")
    with worker_process(kind_args, env) as second:
        wait_until(lambda: _metrics_answer(port), timeout=60, what="the restarted worker's /metrics", ignore=(OSError,))
        wait_until(lambda: bool(redis_client.exists(LOCK)), timeout=60, what="a scheduler lock again")
        assert second.alive(), second.text()[-4000:]
        assert "Address already in use" not in second.text()


# -- 12: start-up -------------------------------------------------------------------------------------
def test_a_worker_whose_metrics_port_is_taken_exits_1_with_one_json_line(worker_env: dict[str, str]) -> None:
    """Two units on one env file (ALERT_METRICS_PORT=9108 in both): the second says so and exits 1."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # where the metrics server binds
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(["run"], {**worker_env, "ALERT_METRICS_PORT": str(port)}, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    [line] = [json.loads(text) for text in done.stdout.splitlines()]
    assert line["event"] == "metrics_port_unavailable" and line["level"] == "error" and line["port"] == port


@pytest.mark.parametrize("raw", ["65536", "70000", "-1"], ids=["just-past", "far-past", "negative"])
def test_a_metrics_port_out_of_range_exits_1_with_one_json_line_naming_it(worker_env: dict[str, str], raw: str) -> None:
    done = run_cli(["run"], {**worker_env, "ALERT_METRICS_PORT": raw})
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    [line] = [json.loads(text) for text in (done.stdout + done.stderr).splitlines()]
    assert line["event"] == "configuration_invalid" and "ALERT_METRICS_PORT" in line["error"]


# -- 6: a Redis outage ----------------------------------------------------------------------------------
@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.close()


@KINDS
def test_after_a_redis_outage_a_scheduler_holds_the_lock_again_and_runs_a_scheduled_job(
    worker_env: dict[str, str],
    smtp_sink: SmtpSink,
    database_url: str,
    private_redis: PrivateRedis,
    kind_args: list[str],
) -> None:
    """Redis killed for OUTAGE_SECONDS (RQ's scheduler process dies of it), then started again (empty): within 30 s of
    Redis answering a scheduler holds the queue's lock, and a job scheduled then runs."""
    env = {**worker_env, "REDIS_URL": private_redis.url}
    client = redis.Redis.from_url(private_redis.url)
    try:
        with worker_process(kind_args, env) as worker:
            wait_until(lambda: bool(client.exists(LOCK)), timeout=60, what="the scheduler lock")
            private_redis.kill()
            down_at = time.monotonic()
            wait_until(lambda: "Scheduler [PID" in worker.text(), timeout=60, what="the scheduler to die of it")
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))  # the outage itself
            private_redis.start()
            wait_until(lambda: bool(client.exists(LOCK)), timeout=30, what="a scheduler lock after the outage")
            Queue("alerts", connection=client).enqueue_in(
                timedelta(seconds=1), execute_delivery_job, "after-outage", "email", "ops@example.com", "s", "b"
            )
            wait_until(
                lambda: _status(database_url, "after-outage") == "delivered", timeout=60, what="the scheduled job"
            )
            assert worker.alive(), worker.text()[-4000:]
    finally:
        client.close()


# -- 7.3: the drain ends ---------------------------------------------------------------------------------
def test_a_job_still_running_when_the_drain_ends_is_left_unfinished_and_the_worker_unregistered(
    worker_env: dict[str, str], redis_client: redis.Redis
) -> None:
    """SIGTERM waits ALERT_JOB_TIMEOUT_SECONDS + 30 s; a job in a call no timer interrupts outlives it. The
    worker exits 0 without reporting it finished, and deletes its alive key (the dead-worker reclaim's cue)."""
    env = {**worker_env, "ALERT_JOB_TIMEOUT_SECONDS": "1", "ALERT_SEND_TIMEOUT_SECONDS": "0.5"}
    with worker_process(["run", "--threads", "2"], env) as worker:
        wait_until(lambda: bool(redis_client.keys("alert:worker:*:alive")), timeout=60, what="the registration")
        queue = Queue("alerts", connection=redis_client)
        job = queue.enqueue("time.sleep", 300, job_timeout=1)
        wait_until(lambda: job.id in queue.started_job_registry, timeout=60, what="the job to start")
        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(timeout=120) == 0, worker.text()[-4000:]
        assert "drain_timed_out" in worker.text()
    assert redis_client.keys("alert:worker:*") == []
    assert job.id not in queue.finished_job_registry
    assert job.get_status(refresh=True) == "started"
