"""The threaded worker's job timeout reaches a thread blocked in a Postgres call (docs/contract.md §7.3): the
pool records which thread holds which connection (``HeldConnections``), and the death penalty shuts down the
sockets of the connections held by the thread whose job timed out. Fake connections over socket pairs."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
from rq.timeouts import JobTimeoutException

from alert_worker.threaded_worker import HELD_CONNECTIONS, DaemonTimerDeathPenalty, HeldConnections
from tests.support.processes import wait_until


@dataclass
class FakePgConn:
    socket: int


class FakeConnection:
    """What ``HeldConnections`` reads of a psycopg connection: ``closed`` and ``pgconn.socket``."""

    def __init__(self) -> None:
        self.ours, self.server = socket.socketpair()
        self.pgconn = FakePgConn(self.ours.fileno())
        self.closed = False

    def was_cut(self) -> bool:
        try:
            return self.ours.recv(1, socket.MSG_DONTWAIT) == b""  # shut down: end-of-file at once
        except BlockingIOError:
            return False

    def close(self) -> None:
        self.ours.close()
        self.server.close()


@pytest.fixture
def connections() -> Iterator[list[FakeConnection]]:
    made: list[FakeConnection] = []
    yield made
    for conn in made:
        conn.close()


def _new(connections: list[FakeConnection]) -> Any:
    conn = FakeConnection()
    connections.append(conn)
    return cast(Any, conn)


def _hold_in_another_thread(registry: HeldConnections, conn: Any) -> int:
    idents: list[int] = []

    def hold() -> None:
        registry.hold(conn)
        idents.append(threading.get_ident())

    thread = threading.Thread(target=hold)
    thread.start()
    thread.join()
    return idents[0]


def _after(seconds: float) -> None:
    past = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() > past, timeout=30, what=f"{seconds} s to pass")


def test_a_timed_out_thread_has_only_its_own_connections_cut(connections: list[FakeConnection]) -> None:
    registry = HeldConnections()
    mine, other = _new(connections), _new(connections)
    registry.hold(mine)
    other_thread = _hold_in_another_thread(registry, other)
    assert registry.cut(threading.get_ident()) == 1
    assert mine.was_cut()
    assert not other.was_cut()
    assert registry.held_by(other_thread) == 1


def test_a_connection_given_back_to_the_pool_is_never_cut_for_the_thread_that_had_it(
    connections: list[FakeConnection],
) -> None:
    registry = HeldConnections()
    conn = _new(connections)
    registry.hold(conn)
    registry.release(conn)
    assert registry.cut(threading.get_ident()) == 0
    assert not conn.was_cut()


def test_after_the_timeout_a_connection_the_thread_takes_is_cut_once_held_past_the_grace(
    connections: list[FakeConnection],
) -> None:
    """The crash hand-back's write after a timeout: it gets the grace, then it is cut like the first call."""
    registry = HeldConnections()
    registry.cut(threading.get_ident(), grace=0.05)
    late = _new(connections)
    registry.hold(late)
    wait_until(late.was_cut, timeout=30, what="the late connection to be cut")


@pytest.mark.parametrize("ends", ["given-back-in-time", "job-ended"], ids=["given-back-within-the-grace", "spared"])
def test_a_late_connection_is_left_alone_when_given_back_in_time_or_once_the_job_ended(
    connections: list[FakeConnection], ends: str
) -> None:
    registry = HeldConnections()
    thread = threading.get_ident()
    registry.cut(thread, grace=0.1)
    if ends == "job-ended":
        registry.spare(thread)
    late = _new(connections)
    registry.hold(late)
    if ends == "given-back-in-time":
        registry.release(late)
    _after(0.5)
    assert not late.was_cut()


def test_the_job_timeout_ends_a_thread_blocked_reading_a_held_connection(connections: list[FakeConnection]) -> None:
    """An asynchronous exception alone waits for the blocking read to return; the cut makes it return."""
    conn = _new(connections)
    ended: list[str] = []

    def job() -> None:
        HELD_CONNECTIONS.hold(conn)
        try:
            with DaemonTimerDeathPenalty(0.2, JobTimeoutException):
                conn.ours.recv(10)  # the server never answers
                time.sleep(30)  # the exception arrives at the next bytecode; never reached
        except JobTimeoutException:
            ended.append("JobTimeoutException")
        finally:
            HELD_CONNECTIONS.release(conn)

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    wait_until(lambda: not thread.is_alive(), timeout=30, what="the timed-out job to end")
    assert ended == ["JobTimeoutException"]
    assert HELD_CONNECTIONS.held_by(thread.ident or 0) == 0
