"""The per-request watchdog of ``channels.http`` (docs/contract.md §7.1 "one deadline below the job timeout")
and the socket cut it, and the threaded worker's job timeout, rely on (``alert_worker.sockets``)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from alert_worker.channels.http import RequestWatch, map_request_errors
from alert_worker.errors import OutcomeUnknownError, TransientDeliveryError
from alert_worker.sockets import cut_socket
from tests.support.processes import wait_until

NEVER = 3600.0  # a budget the test never reaches: it calls ``fire()`` itself


@dataclass
class FakeSocket:
    fd: int

    def fileno(self) -> int:
        return self.fd


@dataclass
class FakeConnection:
    sock: FakeSocket | None = None


@dataclass
class Cuts:
    fds: list[int] = field(default_factory=list)

    def __call__(self, fd: int) -> bool:
        self.fds.append(fd)
        return True


@pytest.fixture
def cuts() -> Cuts:
    return Cuts()


def _watch(cuts: Cuts, budget: float = NEVER) -> RequestWatch:
    return RequestWatch(budget, cut=cuts)


def _mapped(watch: RequestWatch) -> Exception:
    with pytest.raises((OutcomeUnknownError, TransientDeliveryError)) as caught, map_request_errors("slack"):
        raise watch.timeout()
    return caught.value


def test_the_deadline_cuts_the_socket_of_a_request_waiting_for_its_answer(cuts: Cuts) -> None:
    watch = _watch(cuts)
    watch.connecting(FakeConnection())
    assert watch.connected() is False
    assert watch.sending(FakeConnection(FakeSocket(17))) is False
    watch.fire()
    assert cuts.fds == [17]
    assert watch.finish() is True
    assert isinstance(watch.timeout(), requests.ReadTimeout)
    error = _mapped(watch)
    assert isinstance(error, OutcomeUnknownError) and error.reason.startswith("outcome_unknown:")


def test_a_deadline_passing_while_connecting_means_nothing_was_sent(cuts: Cuts) -> None:
    """The TCP connect (or the TLS handshake, once the socket exists) is cut, and the request never written."""
    watch = _watch(cuts)
    connection = FakeConnection(FakeSocket(21))
    assert watch.sending(connection) is False  # plain HTTP connects from inside the request
    watch.connecting(connection)
    watch.fire()
    assert cuts.fds == [21]
    assert watch.connected() is True, "the connection attempt must not go on to send"
    assert watch.finish() is True
    error = _mapped(watch)
    assert isinstance(error, TransientDeliveryError) and not isinstance(error, OutcomeUnknownError)
    assert error.definite, "a definite failure: the slots go back, nothing to look up"


def test_a_deadline_passing_before_a_connection_exists_cuts_the_one_made_afterwards(cuts: Cuts) -> None:
    watch = _watch(cuts)
    watch.fire()  # e.g. while resolving the name
    assert cuts.fds == []
    watch.connecting(FakeConnection(FakeSocket(5)))
    assert cuts.fds == [5]
    assert watch.connected() is True
    assert watch.sending(FakeConnection(FakeSocket(5))) is True, "the request is not written after the deadline"
    assert isinstance(watch.timeout(), requests.ConnectTimeout)


def test_a_finished_request_is_never_cut_so_its_kept_connection_is_safe_in_the_pool(cuts: Cuts) -> None:
    watch = _watch(cuts)
    watch.sending(FakeConnection(FakeSocket(9)))
    assert watch.finish() is False
    watch.fire()  # the timer thread losing the race with finish()
    assert cuts.fds == []
    assert watch.fired is False


def test_the_timer_fires_by_itself_at_the_budget(cuts: Cuts) -> None:
    watch = _watch(cuts, budget=0.05)
    watch.sending(FakeConnection(FakeSocket(11)))
    watch.start()
    wait_until(lambda: watch.fired, timeout=30, what="the request's deadline")
    assert cuts.fds == [11]
    assert watch.finish() is True


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_cutting_a_socket_wakes_a_thread_blocked_reading_it_and_leaves_the_owners_descriptor_open(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    owner, _peer = pair
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(owner.recv(10)), daemon=True)
    reader.start()
    assert cut_socket(owner.fileno()) is True
    reader.join(timeout=30)
    assert not reader.is_alive() and got == [b""], "end-of-file, at once"
    assert owner.fileno() >= 0, "the owner closes its own socket"


@pytest.mark.parametrize("kind", ["negative", "closed", "not-a-socket"])
def test_cutting_what_is_no_socket_is_refused_without_leaking_a_descriptor(kind: str) -> None:
    read_end, write_end = os.pipe()
    try:
        fd = {"negative": -1, "closed": max(read_end, write_end) + 1000, "not-a-socket": read_end}[kind]
        before = len(os.listdir("/proc/self/fd"))
        assert cut_socket(fd) is False
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        os.close(read_end)
        os.close(write_end)


def test_the_watch_reads_the_socket_at_the_deadline_not_when_it_was_told_of_the_connection(cuts: Cuts) -> None:
    """urllib3 sets ``sock`` once TCP connected (and replaces it with the TLS socket): the current one is cut."""
    connection: Any = FakeConnection()
    watch = _watch(cuts)
    watch.connecting(connection)
    connection.sock = FakeSocket(33)
    watch.fire()
    assert cuts.fds == [33]
