"""One deadline for a whole Slack/Twilio request (docs/contract.md §7.1 "Give the whole send one deadline below
the job timeout"), against a loopback server that trickles its answer a byte at a time.

Each byte arrives well inside the per-read socket timeout, so only the watchdog (``channels.http.RequestWatch``:
the connection's socket shut down at the deadline) ends the request, wherever it is: the TLS handshake, the
status line, the headers or the body. The bound is asserted loosely: the send ends well before a job timeout
ten times the budget (the server trickles past that job timeout, so a send it does not cut fails the test).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from alert_worker.channels import build_channel
from alert_worker.channels.base import Channel
from alert_worker.errors import DeliveryError, OutcomeUnknownError, TransientDeliveryError
from alert_worker.models import ChannelType, Message
from alert_worker.settings import Settings
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

BUDGET = 1.0  # ALERT_SEND_TIMEOUT_SECONDS
JOB_TIMEOUT = 10 * BUDGET  # what would cut the send if the deadline did not
TRICKLE_FOR = JOB_TIMEOUT + 5  # the server outlasts the job timeout
BYTE_EVERY = 0.2  # far inside the per-read timeout

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
ANSWERS = {
    # what the server sends at once, what it then trickles (a byte every BYTE_EVERY s), what it ends with
    "status-line": (b"", b"HTTP/1.1 200 OK" + b" " * 200, b"\r\nContent-Length: 2\r\n\r\nok"),
    "headers": (b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"x" * 200, b"\r\nContent-Length: 2\r\n\r\nok"),
    "body": (OK_HEAD + b"Content-Length: 200\r\n\r\n", b"o" * 200, b""),
    "tls-handshake": (b"\x16\x03\x03\x40\x00", b"\x02" * 200, b""),  # a ServerHello record that never ends
    "at-once": (OK_HEAD + b"Content-Length: 2\r\n\r\nok", b"", b""),
}


@dataclass
class TricklingServer:
    """Answers every request on every connection with ``answer``; counts connections and requests."""

    answer: str = "at-once"
    connections: int = 0
    requests: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    def serve(self, listener: socket.socket) -> None:
        while not self.stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(client,), daemon=True).start()

    def _answer(self, client: socket.socket) -> None:
        with client:
            try:
                while self._read_request(client):
                    self.requests += 1
                    head, trickled, tail = ANSWERS[self.answer]
                    client.sendall(head)
                    started = time.monotonic()
                    for byte in trickled:
                        if self.stop.wait(BYTE_EVERY) or time.monotonic() - started > TRICKLE_FOR:
                            return
                        client.sendall(bytes([byte]))
                    client.sendall(tail)
            except OSError:  # the client cut the connection: what the deadline does
                return

    def _read_request(self, client: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data or (self.answer == "tls-handshake" and not data):
            if self.answer == "tls-handshake" and data:
                return True  # a ClientHello has no blank line
            chunk = client.recv(65536)
            if not chunk:
                return False
            data += chunk
        length = 0
        for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = data.split(b"\r\n\r\n", 1)[1]
        while len(body) < length:
            chunk = client.recv(65536)
            if not chunk:
                return False
            body += chunk
        return True


@pytest.fixture
def server() -> Iterator[TricklingServer]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    served = TricklingServer(port=int(listener.getsockname()[1]))
    thread = threading.Thread(target=served.serve, args=(listener,), daemon=True)
    thread.start()
    yield served
    served.stop.set()
    listener.close()


@pytest.fixture
def slack() -> Iterator[Channel]:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/unused",
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "SLACK_WEBHOOK_HOSTS": "127.0.0.1",
            "ALERT_SEND_TIMEOUT_SECONDS": str(BUDGET),
            "ALERT_JOB_TIMEOUT_SECONDS": str(int(JOB_TIMEOUT)),
        }
    )
    channel = build_channel(ChannelType.SLACK, settings, kept=True)
    yield channel
    channel.close()


def _send(channel: Channel, url: str) -> tuple[str, float, DeliveryError | None]:
    message = channel.prepare(
        Message(delivery_id="deadline-1", channel=ChannelType.SLACK, recipient=url, subject="Disk full", body="db-1")
    )
    started = time.monotonic()
    try:
        channel.send(message)
    except DeliveryError as exc:
        return "failed", time.monotonic() - started, exc
    return "delivered", time.monotonic() - started, None


@pytest.mark.parametrize("answer", ["status-line", "headers", "body"])
def test_an_answer_trickled_a_byte_at_a_time_is_cut_at_the_send_deadline_as_an_unknown_outcome(
    server: TricklingServer, slack: Channel, answer: str
) -> None:
    server.answer = answer
    end, took, error = _send(slack, f"http://127.0.0.1:{server.port}/services/T0/B0/trickle")
    assert took < JOB_TIMEOUT, f"the send ran {took:.1f} s: past the job timeout, not cut at the deadline"
    assert end == "failed" and isinstance(error, OutcomeUnknownError), error
    assert error.reason.startswith("outcome_unknown: slack no answer after sending"), error.reason
    assert server.requests == 1


def test_a_tls_handshake_trickled_past_the_deadline_is_cut_and_nothing_was_sent(
    server: TricklingServer, slack: Channel
) -> None:
    server.answer = "tls-handshake"
    end, took, error = _send(slack, f"https://127.0.0.1:{server.port}/services/T0/B0/trickle")
    assert took < JOB_TIMEOUT, f"the send ran {took:.1f} s: past the job timeout, not cut at the deadline"
    assert end == "failed" and isinstance(error, TransientDeliveryError), error
    assert not isinstance(error, OutcomeUnknownError) and error.definite, error.reason


def test_a_request_answered_in_time_leaves_its_kept_connection_uncut_after_the_deadline(
    server: TricklingServer, slack: Channel
) -> None:
    """The watch is disarmed when the answer is read: the pooled connection serves the next send."""
    url = f"http://127.0.0.1:{server.port}/services/T0/B0/fast"
    assert _send(slack, url)[0] == "delivered"
    past = time.monotonic() + 2 * BUDGET
    wait_until(lambda: time.monotonic() > past, timeout=30, what="the first request's deadline to pass")
    end, _, error = _send(slack, url)
    assert end == "delivered", error
    assert (server.connections, server.requests) == (1, 2), "one kept connection, two requests"
