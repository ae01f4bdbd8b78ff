"""The guards every worker of ours runs with (``alert_worker.rq_guard``, docs/contract.md §7.4, §7.5), on fakeredis.

The warm-stop race, made deterministic: RQ's SIGTERM handler is called right after the dequeue moved a job
to the queue's intermediate list, as a signal landing there would.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis
from rq import Queue, SimpleWorker, Worker
from rq.exceptions import StopRequested

from alert_worker.keys import RedisKeys
from alert_worker.liveness import observe_scheduler_locks
from alert_worker.rq_guard import SCHEDULER_CHECK_SECONDS, StopSafeMixin, guarded
from alert_worker.settings import Settings
from alert_worker.threaded_worker import ThreadPoolWorker


def _noop() -> None:
    return None


@pytest.fixture(autouse=True)
def _keep_signal_handlers() -> Iterator[None]:
    """RQ's handler installs its force-stop handlers; put the test runner's back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _threaded(queues: list[Queue], conn: Any) -> Any:
    return ThreadPoolWorker(queues, connection=conn, settings=Settings(database_url="", redis_url=""), threads=2)


def _rq_class(cls: type[Any]) -> Callable[[list[Queue], Any], Any]:
    return lambda queues, conn: guarded(cls)(queues, connection=conn)


WORKERS = pytest.mark.parametrize(
    "make", [_threaded, _rq_class(Worker), _rq_class(SimpleWorker)], ids=["threaded", "forking", "simple"]
)


def _stop_right_after_the_dequeue(worker: Any) -> None:
    """Wrap the worker's queue class so SIGTERM's handler runs as ``dequeue_any`` returns a job."""
    base = worker.queue_class

    class StopAfterDequeue(base):  # type: ignore[misc, valid-type]
        @classmethod
        def dequeue_any(cls, *args: Any, **kwargs: Any) -> Any:
            result = super().dequeue_any(*args, **kwargs)
            worker.request_stop(signal.SIGTERM, None)
            return result

    worker.queue_class = StopAfterDequeue


def _queue_with_a_job() -> tuple[Any, Queue, str]:
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    queue = Queue("alerts", connection=conn)
    job = queue.enqueue(_noop)
    return conn, queue, job.id


def test_rq_itself_strands_a_job_when_sigterm_lands_after_its_dequeue() -> None:
    """Pinned (rq 3.0): the race §7.4 is about — RQ raises its stop exception with the job taken off the
    queue (into the intermediate list on a real Redis >= 6.2), neither queued nor started."""
    conn, queue, job_id = _queue_with_a_job()
    worker = SimpleWorker([queue], connection=conn)
    _stop_right_after_the_dequeue(worker)
    with pytest.raises(StopRequested):
        worker.dequeue_job_and_maintain_ttl(5)
    assert queue.get_job_ids() == [] and job_id not in queue.started_job_registry


@WORKERS
def test_a_sigterm_landing_as_the_dequeue_returns_puts_the_job_back_at_the_head_of_its_queue(
    make: Callable[[list[Queue], Any], Any],
) -> None:
    """No stop exception mid-dequeue; the job the stop caught in hand is queued again, first."""
    conn, queue, job_id = _queue_with_a_job()
    queue.enqueue(_noop)
    worker = make([queue], conn)
    _stop_right_after_the_dequeue(worker)
    assert worker.dequeue_job_and_maintain_ttl(5) is None
    assert worker.stop_requested
    assert queue.get_job_ids()[0] == job_id and len(queue.get_job_ids()) == 2
    assert conn.llen(queue.intermediate_queue_key) == 0


@WORKERS
def test_a_sigterm_after_the_dequeue_kept_its_job_hands_the_job_on(make: Callable[[list[Queue], Any], Any]) -> None:
    """Past that point the job comes back to RQ's loop, which runs it (or the drain does); nothing raises."""
    conn, queue, job_id = _queue_with_a_job()
    worker = make([queue], conn)
    version = worker.get_redis_server_version

    def stop_then_version() -> Any:
        worker.request_stop(signal.SIGTERM, None)
        return version()

    worker.get_redis_server_version = stop_then_version
    result = worker.dequeue_job_and_maintain_ttl(5)
    assert result is not None and result[0].id == job_id
    assert worker.stop_requested


@WORKERS
def test_a_dequeue_after_a_warm_stop_takes_nothing(make: Callable[[list[Queue], Any], Any]) -> None:
    conn, queue, job_id = _queue_with_a_job()
    worker = make([queue], conn)
    worker.request_stop(signal.SIGTERM, None)  # idle, as between two dequeues: no exception either
    assert worker.dequeue_job_and_maintain_ttl(5) is None
    assert queue.get_job_ids() == [job_id]
    assert conn.llen(queue.intermediate_queue_key) == 0


@WORKERS
def test_rqs_stop_handler_always_reads_the_worker_as_busy(make: Callable[[list[Queue], Any], Any]) -> None:
    conn, queue, _ = _queue_with_a_job()
    worker = make([queue], conn)
    worker.set_state("idle")
    assert worker.get_state() == "busy"


class _FakeScheduler:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[bool] = []
        self.fail = fail

    def acquire_locks(self, auto_start: bool = False) -> set[str]:
        self.calls.append(auto_start)
        if self.fail:
            raise redis.ConnectionError("down")
        return {"alerts"}


def _guarded_with_scheduler(scheduler: _FakeScheduler, seen: Callable[[], object] | None = None) -> Any:
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    worker = guarded(SimpleWorker)([Queue("alerts", connection=conn)], connection=conn, scheduler_seen=seen)
    worker.scheduler = scheduler
    return worker


def test_the_scheduler_is_asked_to_restart_itself_at_most_every_few_seconds() -> None:
    """RQ's own restart path (``acquire_locks(auto_start=True)``), rate-limited; the lock sighting recorded."""
    scheduler, sightings = _FakeScheduler(), []
    worker = _guarded_with_scheduler(scheduler, seen=lambda: sightings.append(1))
    worker.keep_scheduler()
    worker.keep_scheduler()
    assert scheduler.calls == [True] and sightings == [1]
    worker._scheduler_checked -= SCHEDULER_CHECK_SECONDS
    worker.keep_scheduler()
    assert scheduler.calls == [True, True]


@pytest.mark.parametrize("state", ["burst", "stopping"], ids=["burst-has-no-scheduler", "after-a-warm-stop"])
def test_the_scheduler_is_not_restarted_in_burst_mode_or_once_stopping(state: str) -> None:
    scheduler = _FakeScheduler()
    worker = _guarded_with_scheduler(scheduler)
    if state == "burst":
        worker._burst = True
    else:
        worker.handle_warm_shutdown_request()  # what RQ's SIGTERM handler calls first
    worker.keep_scheduler()
    assert scheduler.calls == []


def test_a_redis_error_while_restarting_the_scheduler_is_logged_and_retried_later() -> None:
    scheduler = _FakeScheduler(fail=True)
    worker = _guarded_with_scheduler(scheduler)
    worker.keep_scheduler()  # does not raise
    worker._scheduler_checked -= SCHEDULER_CHECK_SECONDS
    worker.keep_scheduler()
    assert scheduler.calls == [True, True]


def test_guarding_keeps_the_class_name_and_is_done_once() -> None:
    cls = guarded(Worker)
    assert cls.__name__ == "Worker" and issubclass(cls, Worker) and issubclass(cls, StopSafeMixin)
    assert guarded(cls) is cls and guarded(ThreadPoolWorker) is ThreadPoolWorker


def test_a_missing_scheduler_lock_is_timed_from_its_first_sighting_and_reset_when_held() -> None:
    """``alert-worker check`` fails once this passes 60 s (docs/contract.md §7.5)."""
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    key = RedisKeys("alert:").scheduler_missing_since("alerts")
    first = observe_scheduler_locks(conn, "alert:", ["alerts"])["alerts"]
    assert first is not None and first < 5
    conn.set(key, float(conn.get(key) or 0) - 61)  # first seen missing 61 s ago
    later = observe_scheduler_locks(conn, "alert:", ["alerts"])["alerts"]
    assert later is not None and later >= 60
    conn.set("rq:scheduler-lock:alerts", "scheduler-1")
    assert observe_scheduler_locks(conn, "alert:", ["alerts"]) == {"alerts": None}
    assert not conn.exists(key)


def test_a_live_scheduler_process_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its locks are its own: asking RQ again would add locks the running process does not schedule."""
    import alert_worker.rq_guard as rq_guard

    monkeypatch.setattr(rq_guard, "scheduler_process_alive", lambda: True)
    scheduler = _FakeScheduler()
    _guarded_with_scheduler(scheduler).keep_scheduler()
    assert scheduler.calls == []


def test_rqs_scheduler_process_has_the_name_the_guard_looks_for() -> None:
    """Pinned (rq 3.0): ``RQScheduler.start`` names its process; ``scheduler_process_alive`` finds it by it."""
    import inspect

    from rq.scheduler import RQScheduler

    from alert_worker.rq_guard import RQ_SCHEDULER_PROCESS_NAME

    assert f"name='{RQ_SCHEDULER_PROCESS_NAME}'" in inspect.getsource(RQScheduler.start)
