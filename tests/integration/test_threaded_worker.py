"""The thread-pooled worker on the real servers: N at once, RQ's registries as under rq.Worker, shared connections."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from rq import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.worker import BaseWorker

import alert_worker.resources as resources
from alert_worker import threaded_worker
from alert_worker.producer import send_alert
from alert_worker.settings import Settings
from alert_worker.threaded_worker import ThreadPoolWorker, open_shared_resources
from tests.integration.counting_sink import CountingSink, running_counting_sink
from tests.support.cli import preserved_logging
from tests.support.smtp import SmtpSink

pytestmark = pytest.mark.integration


@pytest.fixture
def counting_sink() -> Iterator[CountingSink]:
    with running_counting_sink() as sink:
        yield sink


def _open_gate_when(sink: CountingSink, inside: int, *, timeout: float = 30) -> threading.Thread:
    """Open the gate once ``inside`` sends are waiting at once (or after ``timeout``, so a test fails, not hangs)."""

    def watch() -> None:
        deadline = threading.Event()
        for _ in range(int(timeout / 0.01)):
            if sink.inside >= inside:
                break
            deadline.wait(0.01)
        sink.gate.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _run_burst(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], client: redis.Redis, threads: int
) -> ThreadPoolWorker:
    with monkeypatch.context() as patch, preserved_logging():
        for name, value in env.items():
            patch.setenv(name, value)
        worker = ThreadPoolWorker(
            [Queue("alerts", connection=client)], connection=client, settings=Settings.from_env(env), threads=threads
        )
        worker.work(burst=True)
    return worker


def _statuses(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM alert_deliveries GROUP BY status").fetchall())


def test_a_burst_runs_up_to_n_deliveries_at_once_and_rq_records_each_as_under_rq_worker(
    worker_env: dict[str, str],
    counting_sink: CountingSink,
    redis_client: redis.Redis,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """8 jobs, 4 threads: 4 sends wait at once (never 5), each job is in StartedJobRegistry while it runs and
    in FinishedJobRegistry after; the worker is listed by rq while it works; the burst exits when done."""
    env = {**worker_env, "SMTP_PORT": str(counting_sink.port)}
    settings = Settings.from_env(env)
    for i in range(8):
        send_alert("email", f"ops{i}@example.com", "s", "b", delivery_id=f"t-{i}", settings=settings)
    queue = Queue("alerts", connection=redis_client)
    counting_sink.probe = lambda: {
        "started": StartedJobRegistry(queue=queue).count,
        "workers": len(BaseWorker.all(connection=redis_client)),
    }
    _open_gate_when(counting_sink, 4)

    _run_burst(monkeypatch, env, redis_client, threads=4)

    assert counting_sink.most_inside == 4
    assert len(counting_sink.accepted) == 8
    assert _statuses(database_url) == {"delivered": 8}
    assert FinishedJobRegistry(queue=queue).count == 8
    assert StartedJobRegistry(queue=queue).count == 0
    assert max(seen["started"] for seen in counting_sink.observed) >= 4
    assert all(seen["workers"] == 1 for seen in counting_sink.observed)


def test_the_threads_share_one_pool_and_open_no_connection_per_job(
    worker_env: dict[str, str],
    smtp_sink: SmtpSink,
    redis_client: redis.Redis,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No per-job pool or Redis client in this mode; the shared pool never exceeds one connection per thread."""
    settings = Settings.from_env(worker_env)
    for i in range(6):
        send_alert("email", f"ops{i}@example.com", "s", "b", delivery_id=f"p-{i}", settings=settings)

    def refused(_: Settings) -> Any:
        raise AssertionError("a per-job connection was opened")

    shared: list[resources.JobResources] = []

    def recording(settings: Settings, *, threads: int) -> resources.JobResources:
        shared.append(open_shared_resources(settings, threads=threads))
        return shared[-1]

    monkeypatch.setattr(resources, "open_job_resources", refused)
    monkeypatch.setattr(resources, "process_resources", refused)
    monkeypatch.setattr(threaded_worker, "open_shared_resources", recording)
    _run_burst(monkeypatch, worker_env, redis_client, threads=3)
    assert _statuses(database_url) == {"delivered": 6}
    assert len(shared) == 1
    assert 1 <= shared[0].pool.get_stats()["connections_num"] <= 3


def busy_forever() -> None:
    """A job stuck in Python code (no socket to time out): only the timer can end it."""
    while True:
        sum(range(1000))


def test_a_job_over_its_timeout_ends_in_the_failed_registry(
    worker_env: dict[str, str], redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread's job timeout reaches FailedJobRegistry (rq PR #1803's failure mode), and the burst ends."""
    queue = Queue("alerts", connection=redis_client)
    job = queue.enqueue(busy_forever, job_timeout=1)
    _run_burst(monkeypatch, worker_env, redis_client, threads=2)
    assert job.id in FailedJobRegistry(queue=queue)
    assert "JobTimeoutException" in (job.latest_result().exc_string or "")  # type: ignore[union-attr]


def test_the_registration_is_gone_after_a_clean_exit(
    worker_env: dict[str, str], redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst that ends cleanly deletes ``alert:worker:<name>`` and its alive key."""
    worker = _run_burst(monkeypatch, worker_env, redis_client, threads=2)
    assert redis_client.keys(f"alert:worker:{worker.name}*") == []


def test_rqs_own_redis_calls_from_job_threads_are_bounded_near_a_minute(
    redis_url: str, worker_env: dict[str, str]
) -> None:
    """RQ lifts its connection's socket timeout to its dequeue timeout; the threaded worker keeps that under 60 s."""
    client = redis.Redis.from_url(redis_url)
    worker = ThreadPoolWorker(
        [Queue("alerts", connection=client)], connection=client, settings=Settings.from_env(worker_env), threads=2
    )
    assert 0 < client.connection_pool.connection_kwargs["socket_timeout"] <= 60
    assert worker.dequeue_timeout < 60
    client.close()
