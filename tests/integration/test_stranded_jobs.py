"""Jobs a warm stop left taken but unrun come back through the sweep (docs/contract.md §7.4), rows or not.

A stop that lands after RQ's dequeue moved a job to ``rq:queue:<q>:intermediate`` leaves it there; RQ's
maintenance later fails it unrun ("stuck in intermediate queue"). A producer's job with no row is invisible
to the row sweep, so the sweep looks at both places.
"""

from __future__ import annotations

import time

import psycopg
import pytest
import redis
from rq import Queue, SimpleWorker
from rq.intermediate_queue import IntermediateQueue

from alert_worker.entrypoint import execute_delivery_job
from alert_worker.producer import send_alert
from alert_worker.rq_jobs import STRANDED_AFTER_SECONDS
from alert_worker.settings import Settings
from alert_worker.sweep import sweep_pass
from tests.support.cli import preserved_logging
from tests.support.smtp import SmtpSink

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(worker_env: dict[str, str]) -> Settings:
    return Settings.from_env(worker_env)


def _noop() -> None:
    return None


def _strand(client: redis.Redis, queue: Queue) -> None:
    """What the interrupted dequeue did: the job at the head moved to the intermediate list, nothing else."""
    client.lmove(queue.key, queue.intermediate_queue_key)


def _backdate_first_sighting(client: redis.Redis, queue: Queue, job_id: str) -> None:
    stranded = IntermediateQueue(queue.key, connection=client)
    client.set(stranded.get_first_seen_key(job_id), time.time() - STRANDED_AFTER_SECONDS - 1)


def _sweep(settings: Settings) -> None:
    with preserved_logging():
        sweep_pass(settings, lock_ttl_seconds=5, release_lock=True)


def _work(monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str], client: redis.Redis) -> None:
    with monkeypatch.context() as patch, preserved_logging():
        for name, value in worker_env.items():
            patch.setenv(name, value)
        SimpleWorker([Queue("alerts", connection=client)], connection=client).work(burst=True)


def _status(database_url: str, delivery_id: str) -> str | None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT status FROM alert_deliveries WHERE id = %s", (delivery_id,)).fetchone()
    return str(row[0]) if row else None


def test_a_rowless_job_stranded_in_the_intermediate_list_is_delivered_after_two_sweeps(
    settings: Settings,
    worker_env: dict[str, str],
    redis_client: redis.Redis,
    smtp_sink: SmtpSink,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first pass only notes it (a live worker's dequeue takes milliseconds); a later pass puts it back."""
    queue = Queue("alerts", connection=redis_client)
    job = queue.enqueue(execute_delivery_job, "stranded-1", "email", "ops@example.com", "s", "b")
    _strand(redis_client, queue)
    _sweep(settings)
    assert queue.get_job_ids() == [], "seen once: not yet put back"
    _backdate_first_sighting(redis_client, queue, job.id)
    _sweep(settings)
    assert queue.get_job_ids() == [job.id]
    assert redis_client.llen(queue.intermediate_queue_key) == 0
    _work(monkeypatch, worker_env, redis_client)
    assert _status(database_url, "stranded-1") == "delivered"
    assert len(smtp_sink.messages_to("ops@example.com")) == 1


def test_a_job_an_execution_started_is_left_in_the_intermediate_list(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """Started (in the StartedJobRegistry) means a worker has it: the sweep does not put it back."""
    queue = Queue("alerts", connection=redis_client)
    job = queue.enqueue(_noop)
    _strand(redis_client, queue)
    worker = SimpleWorker([queue], connection=redis_client)
    worker.prepare_execution(job)
    _sweep(settings)
    _backdate_first_sighting(redis_client, queue, job.id)
    _sweep(settings)
    assert queue.get_job_ids() == []
    assert redis_client.lrange(queue.intermediate_queue_key, 0, -1) == [job.id.encode()]


def _failed_by_rqs_maintenance(client: redis.Redis, queue: Queue, job_id: str) -> None:
    """RQ's own clean-up of the intermediate list, two passes apart, as f09b reproduced it."""
    stranded = IntermediateQueue(queue.key, connection=client)
    worker = SimpleWorker([queue], connection=client)
    stranded.cleanup(worker, queue)
    client.set(stranded.get_first_seen_key(job_id), time.time() - 120)
    stranded.cleanup(worker, queue)
    assert job_id in queue.failed_job_registry


def test_a_rowless_job_rq_failed_as_stuck_in_the_intermediate_list_is_requeued_and_delivered(
    settings: Settings,
    worker_env: dict[str, str],
    redis_client: redis.Redis,
    smtp_sink: SmtpSink,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = Queue("alerts", connection=redis_client)
    job = queue.enqueue(execute_delivery_job, "stranded-2", "email", "ops@example.com", "s", "b")
    _strand(redis_client, queue)
    _failed_by_rqs_maintenance(redis_client, queue, job.id)
    _sweep(settings)
    assert job.id not in queue.failed_job_registry and queue.get_job_ids() == [job.id]
    _work(monkeypatch, worker_env, redis_client)
    assert _status(database_url, "stranded-2") == "delivered"


@pytest.mark.parametrize("kind", ["has-a-row", "not-a-delivery-job"])
def test_a_failed_job_the_row_sweep_owns_or_that_is_not_ours_stays_failed(
    kind: str, settings: Settings, redis_client: redis.Redis
) -> None:
    """With a row, the row sweep recovers the delivery (no second job from the failed registry)."""
    queue = Queue("alerts", connection=redis_client)
    if kind == "has-a-row":
        delivery = send_alert("email", "ops@example.com", "s", "b", delivery_id="stranded-3", settings=settings)
        assert delivery
        job_id = queue.get_job_ids()[0]
    else:
        job_id = queue.enqueue(_noop).id
    _strand(redis_client, queue)
    _failed_by_rqs_maintenance(redis_client, queue, job_id)
    _sweep(settings)
    assert job_id in queue.failed_job_registry


def test_a_rowless_job_whose_worker_died_mid_run_is_requeued_once_its_started_entry_expires(
    settings: Settings,
    worker_env: dict[str, str],
    redis_client: redis.Redis,
    smtp_sink: SmtpSink,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kill -9 before the claim: RQ would fail it (AbandonedJobError) at a maintenance pass up to 10 min
    later; the sweep runs that clean-up every pass and requeues the job, which has no row to recover."""
    queue = Queue("alerts", connection=redis_client)
    job = queue.enqueue(execute_delivery_job, "stranded-4", "email", "ops@example.com", "s", "b")
    _strand(redis_client, queue)
    SimpleWorker([queue], connection=redis_client).prepare_execution(job)
    job.set_status("started")
    registry = queue.started_job_registry
    [member] = redis_client.zrange(registry.key, 0, -1)
    redis_client.zadd(registry.key, {member: 1})  # its heartbeat expiry long past: nobody runs it
    redis_client.lrem(queue.intermediate_queue_key, 1, job.id)  # as the started job's preparation does
    _sweep(settings)
    assert queue.get_job_ids() == [job.id]
    _work(monkeypatch, worker_env, redis_client)
    assert _status(database_url, "stranded-4") == "delivered"
