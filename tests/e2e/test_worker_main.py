"""``main()`` as the operator runs it: ``python -m alert_worker`` subprocesses against the real services."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from alert_worker.producer import send_alert
from alert_worker.settings import Settings
from tests.support.cli import WorkerProcess, run_cli, worker_process
from tests.support.gated_smtp import GatedSmtpSink, running_gated_sink
from tests.support.processes import wait_until
from tests.support.smtp import SmtpSink

pytestmark = pytest.mark.e2e


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every line must be one JSON object with an ``event``; fail naming the first that is not."""
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON log line: {line!r}")
        assert isinstance(event, dict) and "event" in event, line
        events.append(event)
    return events


def _status(database_url: str, delivery_id: str) -> str:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT status FROM alert_deliveries WHERE id = %s", (delivery_id,)).fetchone()
    return str(row[0]) if row else "missing"


def _send(env: dict[str, str], delivery_id: str, to: str = "ops@example.com") -> None:
    send_alert("email", to, "Disk full", "db-1 at 99%", delivery_id=delivery_id, settings=Settings.from_env(env))


# -- start-up failures ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "event", "named"),
    [
        ({"DATABASE_URL": None}, "configuration_missing", "DATABASE_URL"),
        ({"REDIS_URL": ""}, "configuration_missing", "REDIS_URL"),
        ({"REDIS_URL": "  ", "DATABASE_URL": None}, "configuration_missing", "DATABASE_URL, REDIS_URL"),
        ({"ALERT_MAX_ATTEMPTS": "many"}, "configuration_invalid", "ALERT_MAX_ATTEMPTS"),
        ({"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/postgres"}, "database_unreachable", "127.0.0.1:1"),
        ({"REDIS_URL": "redis://127.0.0.1:1/0"}, "redis_unreachable", "127.0.0.1:1"),
    ],
    ids=["database-url-unset", "redis-url-empty", "both-missing", "bad-setting", "postgres-down", "redis-down"],
)
def test_main_exits_1_with_one_json_line_saying_why(
    worker_env: dict[str, str], override: dict[str, str | None], event: str, named: str
) -> None:
    """Nothing starts; exactly one JSON log line on stdout names the problem."""
    env = {k: v for k, v in {**worker_env, **override}.items() if v is not None}
    done = run_cli(["run"], env, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr == ""
    [line] = _json_lines(done.stdout)
    assert line["event"] == event and line["level"] == "error" and "timestamp" in line
    assert named in json.dumps(line)


# -- a real burst ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [["run", "--burst"], ["--burst"], ["run", "--burst", "--worker-class", "rq.worker.SimpleWorker"]],
    ids=["run-burst", "default-command", "simple-worker"],
)
def test_a_burst_worker_delivers_an_enqueued_job_and_prints_only_json(
    worker_env: dict[str, str], smtp_sink: SmtpSink, database_url: str, argv: list[str]
) -> None:
    """The sent delivery is delivered once; every stdout line is JSON; delivery lines carry the id."""
    _send(worker_env, "burst-1")
    done = run_cli(argv, worker_env, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert _status(database_url, "burst-1") == "delivered"
    assert len(smtp_sink.messages_to("ops@example.com")) == 1
    events = _json_lines(done.stdout + done.stderr)
    names = [e["event"] for e in events]
    assert "worker_started" in names and "delivery_delivered" in names
    about_job = [e for e in events if e["event"].startswith("delivery_") or "alert-burst-1-send" in e["event"]]
    assert len(about_job) >= 3, names
    assert all(e.get("delivery_id") == "burst-1" for e in about_job), about_job
    assert "ops@example.com" not in done.stdout and "db-1 at 99%" not in done.stdout
    assert any(e["event"] == "channel_disabled" and e["channel"] == "sms" for e in events)


# -- SIGTERM -------------------------------------------------------------------------------------------
@pytest.fixture
def gated_sink() -> Iterator[GatedSmtpSink]:
    with running_gated_sink() as sink:
        yield sink


def _gated_env(worker_env: dict[str, str], sink: GatedSmtpSink, **extra: str) -> dict[str, str]:
    return {**worker_env, "SMTP_PORT": str(sink.port), **extra}


def _wait_exit(worker: WorkerProcess, timeout: float = 60) -> int:
    try:
        return worker.process.wait(timeout=timeout)
    except Exception:
        pytest.fail(f"worker did not exit:\n{worker.text()[-4000:]}")


def test_sigterm_during_a_slow_delivery_lets_it_finish_then_exits_0(
    worker_env: dict[str, str], gated_sink: GatedSmtpSink, database_url: str
) -> None:
    """Warm shutdown: the horse finishes the send, the row is delivered once, the worker exits 0."""
    env = _gated_env(worker_env, gated_sink)
    with worker_process(["run"], env) as worker:
        _send(env, "slow-1")
        assert gated_sink.entered.wait(60), worker.text()[-4000:]
        worker.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "warm_stop_requested" in worker.text(), timeout=30, what="the warm shutdown")
        gated_sink.gate.set()
        assert _wait_exit(worker) == 0, worker.text()[-4000:]
        _json_lines(worker.text())
    assert _status(database_url, "slow-1") == "delivered"
    assert len(gated_sink.messages_to("ops@example.com")) == 1


def test_a_delivery_killed_by_a_cold_shutdown_stays_claimable_and_the_sweeper_thread_recovers_it(
    worker_env: dict[str, str], gated_sink: GatedSmtpSink, database_url: str
) -> None:
    """SIGTERM twice kills the horse mid-send: the row stays in_progress; another worker's sweeper
    re-enqueues it once the claim is stuck, and it is delivered exactly once."""
    env = _gated_env(
        worker_env,
        gated_sink,
        ALERT_JOB_TIMEOUT_SECONDS="5",
        ALERT_SEND_TIMEOUT_SECONDS="4",  # below the job timeout (checked at start-up)
        ALERT_STUCK_AFTER_SECONDS="6",
        ALERT_SWEEP_GRACE_SECONDS="1",
        ALERT_SWEEP_INTERVAL_SECONDS="0.5",
    )
    with worker_process(["run"], env) as first:
        _send(env, "cold-1")
        assert gated_sink.entered.wait(60), first.text()[-4000:]
        first.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # RQ ignores a second signal within 1 s of the first (worker-pool duplicates): wait that out.
        wait_until(lambda: time.monotonic() - signalled > 1.2, timeout=5, what="RQ's duplicate-signal window")
        first.process.send_signal(signal.SIGTERM)
        _wait_exit(first)
        assert "cold shut down" in first.text()
    assert _status(database_url, "cold-1") == "in_progress"
    assert gated_sink.accepted == []

    gated_sink.gate.set()
    with worker_process(["run"], env) as second:
        wait_until(lambda: _status(database_url, "cold-1") == "delivered", timeout=60, what="the recovery")
        second.process.send_signal(signal.SIGTERM)
        assert _wait_exit(second) == 0
        events = _json_lines(second.text())
    assert any(e["event"] == "sweep_done" and e.get("requeued") == 1 for e in events)
    assert len(gated_sink.messages_to("ops@example.com")) == 1


# -- metrics from a forking worker -------------------------------------------------------------------
def test_metrics_scraped_over_http_count_deliveries_made_in_forked_work_horses(
    worker_env: dict[str, str], smtp_sink: SmtpSink, database_url: str
) -> None:
    """Three delivered and one poisoned by the default (forking) Worker: the parent serves those counts."""
    import urllib.request

    from tests.integration.test_metrics import samples
    from tests.support.smtp import free_port

    port = free_port()
    env = {**worker_env, "ALERT_METRICS_PORT": str(port)}
    smtp_sink.rcpt_replies.append("550 5.1.1 mailbox unavailable")
    _send(env, "m-bad", to="gone@example.com")
    for n in range(3):
        _send(env, f"m-{n}")
    key = ("alert_delivery_attempts_total", (("channel", "email"), ("outcome", "delivered")))
    scraped: dict[Any, float] = {}

    def scrape() -> bool:
        nonlocal scraped
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                scraped = samples(response.read().decode())
        except OSError:
            return False
        return scraped.get(key) == 3 and scraped.get(("alert_poison_queue_size", ())) == 1

    with worker_process(["run"], env) as worker:
        wait_until(scrape, timeout=60, what=f"the scraped counts (last: {scraped})")
        worker.process.send_signal(signal.SIGTERM)
        assert _wait_exit(worker) == 0
        events = _json_lines(worker.text())
    assert worker.process.returncode == 0
    assert scraped[("alert_delivery_attempts_total", (("channel", "email"), ("outcome", "poisoned")))] == 1
    assert scraped[("alert_delivery_latency_seconds_count", (("channel", "email"),))] == 3
    assert scraped[("alert_queue_depth", ())] == 0
    assert any(e["event"] == "worker_started" and e["metrics_port"] == port for e in events)


def test_a_default_slack_webhook_the_guard_refuses_is_reported_once_at_start_up(worker_env: dict[str, str]) -> None:
    """A bad SLACK_WEBHOOK_URL is found before the first alert, and its path is not printed."""
    env = {**worker_env, "SLACK_WEBHOOK_URL": "http://evil.example/services/T0/B0/secret-path-canary"}
    done = run_cli(["run", "--burst"], env, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    events = [e for e in _json_lines(done.stdout + done.stderr) if e["event"] == "channel_misconfigured"]
    assert len(events) == 1 and events[0]["variable"] == "SLACK_WEBHOOK_URL"
    assert "SLACK_WEBHOOK_HOSTS" in events[0]["reason"]
    assert "secret-path-canary" not in done.stdout + done.stderr
