"""Issue 20 against real worker processes: instances on one host, placeable names, re-registration after
Redis lost its keys, ``rq suspend``/``resume`` as documented, and RQ's per-job lines kept quiet."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
import redis
from rq import Worker
from rq.suspension import resume, suspend

from alert_worker.producer import send_alert
from alert_worker.settings import Settings
from tests.support.cli import run_cli, worker_process
from tests.support.processes import free_port, wait_until

pytestmark = pytest.mark.e2e

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _status(database_url: str, delivery_id: str) -> str | None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT status FROM alert_deliveries WHERE id = %s", (delivery_id,)).fetchone()
    return None if row is None else str(row[0])


def _metrics_answer(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.status == 200 and b"alert_workers_live" in response.read()
    except OSError:
        return False


def _rq_worker_names(redis_client: redis.Redis) -> list[str]:
    return sorted(w.name for w in Worker.all(connection=redis_client))


def _rq_state(redis_client: redis.Redis, name: str) -> str:
    """What ``rq info`` shows, read afresh (a ``Worker`` object caches its state)."""
    return (redis_client.hget(f"rq:worker:{name}", "state") or b"").decode()


def _two_free_neighbours() -> int:
    """A base port whose next two ports are free (instances 1 and 2 of the template)."""
    for _ in range(50):
        base = free_port()
        if base + 2 > 65535:
            continue
        try:
            for port in (base + 1, base + 2):
                with socket.socket() as probe:
                    probe.bind(("0.0.0.0", port))
        except OSError:
            continue
        return base
    pytest.fail("no three consecutive free ports")


def test_two_template_instances_from_one_env_file_each_serve_metrics_on_their_own_port(
    worker_env: dict[str, str], redis_client: redis.Redis
) -> None:
    """alert-worker@1 and @2 share ALERT_METRICS_PORT; the template adds the instance number (``%i``)."""
    template = (DEPLOY / "alert-worker@.service").read_text()
    assert "Environment=ALERT_METRICS_PORT_OFFSET=%i" in template
    base = _two_free_neighbours()
    env = {**worker_env, "ALERT_METRICS_PORT": str(base)}
    with (
        worker_process(["run", "--threads", "1"], {**env, "ALERT_METRICS_PORT_OFFSET": "1"}) as one,
        worker_process(["run", "--threads", "1"], {**env, "ALERT_METRICS_PORT_OFFSET": "2"}) as two,
    ):
        wait_until(lambda: _metrics_answer(base + 1), timeout=90, what=f"instance 1 on {base + 1}:\n{one.text()}")
        wait_until(lambda: _metrics_answer(base + 2), timeout=90, what=f"instance 2 on {base + 2}:\n{two.text()}")
        assert one.alive() and two.alive()
        started = [json.loads(line) for w in (one, two) for line in w.lines() if '"worker_started"' in line]
        assert sorted(line["metrics_port"] for line in started) == [base + 1, base + 2]


def test_a_worker_is_named_by_host_and_pid_and_registers_again_after_redis_lost_its_keys(
    worker_env: dict[str, str], redis_client: redis.Redis, database_url: str
) -> None:
    """``rq info`` names it ``<host>.<pid>.<hex>``; after FLUSHDB it shows up again within a liveness beat and
    keeps delivering."""
    env = {**worker_env, "ALERT_JOB_TIMEOUT_SECONDS": "6", "ALERT_STUCK_AFTER_SECONDS": "60"}  # beats every 2 s
    with worker_process(["run", "--threads", "2"], env) as worker:
        wait_until(lambda: len(_rq_worker_names(redis_client)) == 1, timeout=90, what=f"rq info:\n{worker.text()}")
        [name] = _rq_worker_names(redis_client)
        host, pid, tail = name.split(".")
        assert host == socket.gethostname().split(".")[0] and pid == str(worker.process.pid) and len(tail) == 6

        redis_client.flushdb()
        wait_until(
            lambda: _rq_worker_names(redis_client) == [name], timeout=60, what=f"re-registration:\n{worker.text()}"
        )
        wait_until(lambda: "worker_registered_again" in worker.text(), timeout=30, what="the log line saying so")
        settings = Settings.from_env(env)
        send_alert("email", "ops@example.com", "s", "b", delivery_id="after-flush", settings=settings)
        wait_until(lambda: _status(database_url, "after-flush") == "delivered", timeout=60, what="a delivery")


def test_rq_suspend_stops_the_worker_taking_jobs_after_the_one_that_ends_its_wait_and_resume_restarts_it(
    worker_env: dict[str, str], redis_client: redis.Redis, database_url: str
) -> None:
    """What docs/operations.md says of ``rq suspend``: an idle worker is blocked in RQ's dequeue, so the first
    job after ``suspend`` still runs; from then on the worker takes no job until ``rq resume``."""
    settings = Settings.from_env(worker_env)
    with worker_process(["run", "--threads", "2"], worker_env) as worker:
        wait_until(lambda: len(_rq_worker_names(redis_client)) == 1, timeout=90, what=f"rq info:\n{worker.text()}")
        [name] = _rq_worker_names(redis_client)
        wait_until(lambda: _rq_state(redis_client, name) == "idle", timeout=60, what="the worker waiting for a job")
        idle_since = time.monotonic()  # the documented case: an idle worker, not one taking jobs back to back
        wait_until(
            lambda: time.monotonic() - idle_since > 1.5 and _rq_state(redis_client, name) == "idle",
            timeout=60,
            what="the worker idle for over a second",
        )
        suspend(redis_client)
        send_alert("email", "ops@example.com", "s", "b", delivery_id="first", settings=settings)
        wait_until(lambda: _status(database_url, "first") == "delivered", timeout=60, what="the job ending the wait")
        wait_until(
            lambda: _rq_state(redis_client, name) == "suspended", timeout=90, what=f"rq info's state:\n{worker.text()}"
        )
        send_alert("email", "ops@example.com", "s", "b", delivery_id="held", settings=settings)
        with pytest.raises(AssertionError):  # suspended: not taken for 5 s (a bounded wait for a non-event)
            wait_until(lambda: _status(database_url, "held") != "pending", timeout=5, what="held stays pending")
        resume(redis_client)
        wait_until(lambda: _status(database_url, "held") == "delivered", timeout=60, what="delivery after resume")


def test_a_burst_run_logs_none_of_rqs_per_job_info_lines_by_default(
    worker_env: dict[str, str], database_url: str
) -> None:
    """RQ's "Job OK" and "Acquired scheduler lock" are INFO: quiet unless ALERT_RQ_LOG_LEVEL=INFO."""
    settings = Settings.from_env(worker_env)
    send_alert("email", "ops@example.com", "s", "b", delivery_id="burst-1", settings=settings)
    quiet = run_cli(["run", "--burst", "--threads", "1"], worker_env, timeout=120)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert _status(database_url, "burst-1") == "delivered"
    events = [json.loads(line) for line in quiet.stdout.splitlines()]
    assert {"worker_started", "worker_stopped"} <= {e["event"] for e in events}
    assert not [e for e in events if str(e.get("logger", "")).startswith("rq") and e["level"] == "info"]

    send_alert("email", "ops@example.com", "s", "b", delivery_id="burst-2", settings=settings)
    loud = run_cli(["run", "--burst", "--threads", "1"], {**worker_env, "ALERT_RQ_LOG_LEVEL": "INFO"}, timeout=120)
    assert "Job OK" in loud.stdout


def test_version_prints_the_package_version() -> None:
    """``alert-worker --version`` answers without settings or servers."""
    done = subprocess.run(
        [sys.executable, "-m", "alert_worker", "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout.startswith("alert-worker ")
