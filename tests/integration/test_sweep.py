"""The sweep on the real servers: lost jobs come back, once, whoever sweeps."""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
import pytest
import redis
from rq import Queue, SimpleWorker

from alert_worker.counters import poison_count, queue_depth
from alert_worker.producer import send_alert
from alert_worker.resources import short_lived
from alert_worker.rq_jobs import RqEnqueuer
from alert_worker.settings import Settings
from alert_worker.sweep import SweepReport, sweep_once, sweep_pass
from tests.support.cli import preserved_logging
from tests.support.smtp import SmtpSink

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(worker_env: dict[str, str]) -> Settings:
    return Settings.from_env({**worker_env, "ALERT_SWEEP_GRACE_SECONDS": "1"})


def _sql(database_url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def _lose_jobs(client: redis.Redis, database_url: str) -> None:
    """Redis forgets every job, and every pending row is an hour old: overdue for any grace."""
    client.flushdb()
    _sql(database_url, "UPDATE alert_deliveries SET updated_at = now() - interval '1 hour' WHERE status = 'pending'")


def _work(monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str], client: redis.Redis) -> None:
    with monkeypatch.context() as patch, preserved_logging():
        for name, value in worker_env.items():
            patch.setenv(name, value)
        SimpleWorker([Queue("alerts", connection=client)], connection=client).work(burst=True)


def test_a_pending_row_whose_job_redis_lost_is_delivered_after_one_sweep(
    settings: Settings,
    worker_env: dict[str, str],
    redis_client: redis.Redis,
    smtp_sink: SmtpSink,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis flushed after send: nothing to work until a sweep re-enqueues from Postgres."""
    send_alert("email", "ops@example.com", "s", "b", delivery_id="lost-1", settings=settings)
    _lose_jobs(redis_client, database_url)
    _work(monkeypatch, worker_env, redis_client)
    assert smtp_sink.accepted == []

    report = sweep_pass(settings, lock_ttl_seconds=60, release_lock=True)
    assert report is not None and report.requeued == 1 and report.queue_depth == 1
    _work(monkeypatch, worker_env, redis_client)
    assert _sql(database_url, "SELECT status FROM alert_deliveries WHERE id = 'lost-1'") == [("delivered",)]
    assert len(smtp_sink.messages_to("ops@example.com")) == 1


def _concurrently(n: int, action: Callable[[], object]) -> list[object]:
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = action()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


def test_two_sweeps_at_once_without_the_lock_enqueue_a_lost_row_once(
    worker_env: dict[str, str], redis_client: redis.Redis, database_url: str
) -> None:
    """The stamping UPDATE (SKIP LOCKED) hands each overdue row to one sweeper per grace period."""
    settings = Settings.from_env(worker_env)  # the default 60 s grace
    send_alert("email", "ops@example.com", "s", "b", delivery_id="race-1", settings=settings)
    redis_client.flushdb()
    _sql(database_url, "UPDATE alert_deliveries SET updated_at = now() - interval '1 hour' WHERE id = 'race-1'")

    def sweep() -> SweepReport:
        with short_lived(settings) as conns:
            return sweep_once(
                store=conns.store,
                enqueuer=RqEnqueuer(connection=conns.redis),
                queue_depth=queue_depth(conns.redis),
                poison_gauge=poison_count(conns.redis),
                grace_seconds=settings.sweep_grace_seconds,
            )

    reports = _concurrently(4, sweep)
    assert sum(r.requeued for r in reports if isinstance(r, SweepReport)) == 1
    assert len(Queue("alerts", connection=redis_client).get_job_ids()) == 1
    assert sweep().requeued == 0, "stamped: not again before another grace period"


def test_two_workers_sweeping_at_once_take_turns_through_the_lock(
    settings: Settings, redis_client: redis.Redis, database_url: str
) -> None:
    """With the cluster-wide lock only one pass runs; the other reports it did nothing."""
    send_alert("email", "ops@example.com", "s", "b", delivery_id="race-2", settings=settings)
    _lose_jobs(redis_client, database_url)
    reports = _concurrently(2, lambda: sweep_pass(settings, lock_ttl_seconds=30, release_lock=False))
    assert sorted(r is None for r in reports) == [False, True]
    assert len(Queue("alerts", connection=redis_client).get_job_ids()) == 1


def test_the_worker_thread_keeps_the_lock_for_its_interval(settings: Settings) -> None:
    """A pass that does not release leaves the lock to expire: one sweep per interval cluster-wide."""
    assert sweep_pass(settings, lock_ttl_seconds=30, release_lock=False) is not None
    assert sweep_pass(settings, lock_ttl_seconds=30, release_lock=True) is None


def test_a_stuck_in_progress_row_is_re_enqueued_once_its_claim_is_old(
    settings: Settings, redis_client: redis.Redis, database_url: str
) -> None:
    """A claim older than ALERT_STUCK_AFTER_SECONDS is a crashed job: the sweep re-enqueues it."""
    send_alert("email", "ops@example.com", "s", "b", delivery_id="stuck-1", settings=settings)
    redis_client.flushdb()
    _sql(
        database_url,
        "UPDATE alert_deliveries SET status = 'in_progress', last_attempt_at = now() - "
        "interval '1 hour', updated_at = now() - interval '1 hour' WHERE id = 'stuck-1'",
    )
    report = sweep_pass(settings, lock_ttl_seconds=60, release_lock=True)
    assert report is not None and report.requeued == 1
    [job_id] = Queue("alerts", connection=redis_client).get_job_ids()
    assert job_id.startswith("alert-stuck-1-sweep-")


def test_a_sweep_reconciles_the_gauges_and_the_oldest_pending_time(
    settings: Settings, redis_client: redis.Redis, database_url: str
) -> None:
    """Queue depth, poison size and the oldest untried pending delivery come from Postgres."""
    send_alert("email", "ops@example.com", "s", "b", delivery_id="g-1", settings=settings)
    send_alert("email", "ops@example.com", "s", "b", delivery_id="g-2", settings=settings)
    _sql(database_url, "UPDATE alert_deliveries SET status = 'poison', poison_at = now() WHERE id = 'g-2'")
    _sql(database_url, "UPDATE alert_deliveries SET created_at = to_timestamp(1000000) WHERE id = 'g-1'")
    redis_client.set("alert:queue:depth", 99)
    assert sweep_pass(settings, lock_ttl_seconds=60, release_lock=True) is not None
    assert redis_client.mget("alert:queue:depth", "alert:poison:count", "alert:pending:oldest_since") == [
        b"1",
        b"1",
        b"1000000",
    ]


def test_a_pending_row_whose_job_still_waits_in_a_backlog_is_not_re_enqueued(
    settings: Settings, redis_client: redis.Redis, database_url: str
) -> None:
    """RQ is FIFO: a row that became due after the oldest queued job may have its job behind it."""
    send_alert("email", "ops@example.com", "s", "b", delivery_id="queued-1", settings=settings)
    _sql(database_url, "UPDATE alert_deliveries SET updated_at = now() - interval '2 seconds' WHERE id = 'queued-1'")
    report = sweep_pass(settings, lock_ttl_seconds=60, release_lock=True)
    assert report is not None and report.requeued == 0, "overdue, but the job is still in the queue"
    assert Queue("alerts", connection=redis_client).count == 1

    redis_client.flushdb()  # now the job really is lost
    report = sweep_pass(settings, lock_ttl_seconds=60, release_lock=True)
    assert report is not None and report.requeued == 1
    assert Queue("alerts", connection=redis_client).count == 1


def test_a_row_due_before_the_oldest_queued_job_is_re_enqueued_because_its_job_has_left(
    settings: Settings, redis_client: redis.Redis, database_url: str
) -> None:
    """The queue's head was enqueued after the row became due: the row's job was consumed or lost."""
    send_alert("email", "ops@example.com", "s", "b", delivery_id="old-1", settings=settings)
    redis_client.flushdb()
    Queue("alerts", connection=redis_client).enqueue("os.getpid")  # an unrelated, newer job at the head
    _sql(database_url, "UPDATE alert_deliveries SET updated_at = now() - interval '1 hour' WHERE id = 'old-1'")
    report = sweep_pass(settings, lock_ttl_seconds=60, release_lock=True)
    assert report is not None and report.requeued == 1
