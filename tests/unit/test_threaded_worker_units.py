"""The thread count, the liveness keys, and the rq internals the threaded worker is pinned to."""

from __future__ import annotations

import inspect

import fakeredis
import pytest
from rq.timeouts import TimerDeathPenalty
from rq.worker import BaseWorker

from alert_worker.liveness import (
    MAX_ALIVE_TTL_SECONDS,
    REGISTRATION_TTL_SECONDS,
    RQ_WORKER_KEY_PREFIX,
    Liveness,
    Registration,
    alive_ttl_for,
)
from alert_worker.settings import Settings
from alert_worker.threaded_worker import DaemonTimerDeathPenalty, ThreadPoolWorker, resolve_threads


@pytest.mark.parametrize(
    ("env", "override", "expected"),
    [
        ({}, None, 8),
        ({"ALERT_WORKER_THREADS": "16"}, None, 16),
        ({"ALERT_WORKER_THREADS": "16"}, 3, 3),
        ({}, 1, 1),
        ({}, 64, 64),
    ],
    ids=["default-8", "env", "flag-wins", "lowest", "highest"],
)
def test_the_thread_count_comes_from_the_flag_then_the_settings_then_8(
    env: dict[str, str], override: int | None, expected: int
) -> None:
    """``--threads`` overrides ``ALERT_WORKER_THREADS`` (read by ``Settings``); both default to 8."""
    assert resolve_threads(Settings.from_env(env), override) == expected


@pytest.mark.parametrize("override", [0, 65, -1], ids=["flag-zero", "flag-65", "flag-negative"])
def test_a_threads_flag_outside_1_to_64_is_refused_naming_the_flag(override: int) -> None:
    """The refusal names ``--threads``, so the one log line says what to fix."""
    with pytest.raises(ValueError, match=r"--threads must be 1\.\.64"):
        resolve_threads(Settings.from_env({}), override)


@pytest.mark.parametrize(("job_timeout", "ttl"), [(1, 3), (10, 10), (60, 30)], ids=["floor-3", "job-timeout", "cap-30"])
def test_the_alive_ttl_follows_the_job_timeout_within_3_to_30_seconds(job_timeout: int, ttl: int) -> None:
    """A dead worker is noticed about as fast as a job could have ended, never later than 30 s."""
    assert alive_ttl_for(job_timeout) == ttl


def test_a_beat_writes_the_registration_and_a_short_lived_alive_key() -> None:
    """Hash fields threads/in_flight/started_at with a TTL of at least 24 h; alive key TTL at most 30 s."""
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    reg = Registration(client=client, prefix="alert:", name="w1", threads=8, in_flight=lambda: 3, clock=lambda: 100.0)
    reg.beat()
    assert client.hgetall("alert:worker:w1") == {b"threads": b"8", b"in_flight": b"3", b"started_at": b"100.000"}
    assert client.ttl("alert:worker:w1") >= 24 * 3600
    assert 0 < client.ttl("alert:worker:w1:alive") <= MAX_ALIVE_TTL_SECONDS
    assert REGISTRATION_TTL_SECONDS >= 24 * 3600
    reg.close()
    assert not client.exists("alert:worker:w1", "alert:worker:w1:alive")


def test_an_alive_ttl_over_30_seconds_is_refused() -> None:
    """The contract caps the alive key at 30 s."""
    with pytest.raises(ValueError, match="alive_ttl_seconds"):
        Registration(
            client=fakeredis.FakeRedis(),
            prefix="alert:",
            name="w",
            threads=1,
            in_flight=lambda: 0,
            alive_ttl_seconds=31,
        )


@pytest.mark.parametrize(
    ("keys", "alive"),
    [
        (["alert:worker:w:alive"], True),
        (["alert:worker:w"], False),
        (["alert:worker:w", "rq:worker:w"], False),
        (["rq:worker:w"], True),
        ([], False),
    ],
    ids=["alive-key", "registered-no-alive-key", "registered-rq-key-ignored", "plain-rq-worker", "nothing"],
)
def test_a_claimant_is_alive_by_its_alive_key_or_if_unregistered_by_rqs_worker_key(
    keys: list[str], alive: bool
) -> None:
    """docs/contract.md §6.1's liveness rule, table by table."""
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    for key in keys:
        client.set(key, "1")
    assert Liveness(client=client, prefix="alert:").is_alive("w") is alive


def test_rqs_worker_key_prefix_is_the_one_liveness_checks() -> None:
    """Pinned: liveness imports no rq, so it writes RQ's worker-key prefix itself."""
    assert BaseWorker.redis_worker_namespace_prefix == RQ_WORKER_KEY_PREFIX


def test_the_rq_extension_points_the_threaded_worker_overrides_still_exist() -> None:
    """Pinned (rq 3.0): the methods ThreadPoolWorker overrides or calls, with the signatures it relies on."""
    params = {
        "execute_job": ["self", "job", "queue"],
        "perform_job": ["self", "job", "queue", "execution"],
        "prepare_execution": ["self", "job"],
        "request_stop": ["self", "signum", "frame"],
        "request_force_stop": ["self", "signum", "frame"],
        "handle_warm_shutdown_request": ["self"],
        "teardown": ["self"],
        "dequeue_job_and_maintain_ttl": ["self", "timeout", "max_idle_time"],
        "get_heartbeat_ttl": ["self", "job", "working_time"],
        "check_for_suspension": ["self", "burst"],
        "set_state": ["self", "state", "pipeline"],
    }
    for name, expected in params.items():
        assert list(inspect.signature(getattr(BaseWorker, name)).parameters) == expected, name
    assert issubclass(ThreadPoolWorker, BaseWorker)
    assert list(inspect.signature(TimerDeathPenalty.new_timer).parameters) == ["self"]


def test_the_job_timer_is_a_daemon_thread() -> None:
    """A cold exit must not wait for a job's timeout timer."""
    penalty = DaemonTimerDeathPenalty(5)
    assert penalty.new_timer().daemon


def test_rqs_bare_heartbeats_are_spaced_but_explicit_ones_always_go_through() -> None:
    """The dequeue thread serves N job threads: RQ's several bare beats per job collapse to one per 5 s."""
    from rq import Queue

    from alert_worker.settings import Settings

    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    worker = ThreadPoolWorker(
        [Queue("alerts", connection=conn)], connection=conn, settings=Settings(database_url="", redis_url=""), threads=2
    )
    worker.heartbeat()
    assert conn.exists(worker.key)
    conn.delete(worker.key)
    worker.heartbeat()
    assert not conn.exists(worker.key)
    worker.heartbeat(timeout=100)
    assert conn.exists(worker.key)


def _fake_worker() -> tuple[ThreadPoolWorker, fakeredis.FakeRedis]:
    from rq import Queue

    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    worker = ThreadPoolWorker(
        [Queue("alerts", connection=conn)], connection=conn, settings=Settings(database_url="", redis_url=""), threads=2
    )
    return worker, conn


def test_the_suspension_check_asks_redis_at_most_once_a_second() -> None:
    """RQ checks `rq suspend` before every dequeue; here a suspension is seen within a second, not per job."""
    from rq.exceptions import StopRequested
    from rq.suspension import suspend
    from rq.worker import WorkerStatus

    worker, conn = _fake_worker()
    worker.set_state(WorkerStatus.IDLE)  # a dequeue starts and returns at once: jobs back to back
    worker.check_for_suspension(burst=True)
    suspend(conn)
    worker.set_state(WorkerStatus.IDLE)
    worker.check_for_suspension(burst=True)  # within the second: not asked again
    worker._last_suspension_check -= 1.0
    with pytest.raises(StopRequested):
        worker.check_for_suspension(burst=True)


def test_after_a_dequeue_that_waited_the_suspension_is_always_checked() -> None:
    """An idle worker blocked in the dequeue takes the first job after `rq suspend`, then no second one."""
    from rq.exceptions import StopRequested
    from rq.suspension import suspend

    worker, conn = _fake_worker()
    worker.check_for_suspension(burst=True)
    suspend(conn)
    worker._dequeue_started -= 5.0  # the dequeue that just returned had waited
    with pytest.raises(StopRequested):
        worker.check_for_suspension(burst=True)


def test_the_worker_is_marked_idle_only_when_no_job_is_in_flight() -> None:
    """RQ's idle write before each dequeue is skipped while other threads run jobs; busy writes go through."""
    from rq.worker import WorkerStatus

    worker, conn = _fake_worker()
    worker.set_state(WorkerStatus.BUSY)
    worker._in_flight = 1
    worker.set_state(WorkerStatus.IDLE)
    assert conn.hget(worker.key, "state") == b"busy"
    assert worker.get_state() == WorkerStatus.BUSY, "RQ's SIGTERM handler must never raise mid-dequeue (§7.4)"
    worker._in_flight = 0
    worker.set_state(WorkerStatus.IDLE)
    assert conn.hget(worker.key, "state") == b"idle"


def test_a_worker_name_carries_host_and_pid_and_is_unique() -> None:
    """``<host>.<pid>.<6 hex>``: placeable by an operator; two names from one process still differ."""
    import os
    import socket

    from alert_worker.liveness import worker_name

    first, second = worker_name(), worker_name()
    host, pid, tail = first.split(".")
    assert (host, pid) == (socket.gethostname().split(".")[0], str(os.getpid())) and len(tail) == 6
    assert first != second
