"""A kept SMTP connection (``EmailChannel(keep_open=True)``) is reused only when provably usable, against aiosmtpd."""

from __future__ import annotations

import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from alert_worker.channels.email import KEEP_IDLE_SECONDS, EmailChannel
from alert_worker.errors import DeliveryError
from alert_worker.models import ChannelType, Message
from alert_worker.settings import SmtpSettings
from tests.support.processes import free_port, wait_until

pytestmark = pytest.mark.integration


@dataclass
class PeerSink:
    """Records the client address of every accepted message (one address per TCP connection)."""

    port: int = 0
    peers: list[Any] = field(default_factory=list)
    rcpt_replies: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        with self.lock:
            if self.rcpt_replies:
                return self.rcpt_replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.peers.append(session.peer)
        return "250 2.0.0 OK queued"


@contextmanager
def running_peer_sink(**smtp_parameters: Any) -> Iterator[PeerSink]:
    sink = PeerSink(port=free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port, **smtp_parameters)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _channel(sink: PeerSink, clock: Clock | None = None) -> EmailChannel:
    settings = SmtpSettings("127.0.0.1", sink.port, "", "", "alerts@example.org", "none")
    return EmailChannel(settings=settings, timeout_seconds=5, keep_open=True, clock=clock or Clock())


def _send(channel: EmailChannel, n: int) -> None:
    message = Message(
        delivery_id=f"d{n}", channel=ChannelType.EMAIL, recipient="ops@example.com", subject="s", body="b"
    )
    channel.send(channel.prepare(message))


def test_consecutive_sends_reuse_one_connection_and_close_quits_it() -> None:
    """Three messages, one TCP connection; after close() nothing is kept."""
    with running_peer_sink() as sink:
        channel = _channel(sink)
        for n in range(3):
            _send(channel, n)
        channel.close()
        assert len(sink.peers) == 3
        assert len(set(sink.peers)) == 1
        assert channel._kept is None


def test_a_connection_the_server_timed_out_is_replaced_and_the_message_sent_once() -> None:
    """aiosmtpd closes idle sessions after 0.3 s (421): the NOOP check fails, a new connection sends it once."""
    with running_peer_sink(timeout=0.3) as sink:
        channel = _channel(sink)
        _send(channel, 0)
        kept = channel._kept
        assert kept is not None and kept.sock is not None
        sock = kept.sock
        wait_until(lambda: bool(select.select([sock], [], [], 0)[0]), timeout=10, what="the server's idle timeout")
        _send(channel, 1)
        channel.close()
        assert len(sink.peers) == 2
        assert len(set(sink.peers)) == 2


def test_a_connection_idle_longer_than_the_keep_limit_is_not_probed_but_replaced() -> None:
    """Past KEEP_IDLE_SECONDS a silently dropped connection would hang NOOP: reconnect instead."""
    clock = Clock()
    with running_peer_sink() as sink:
        channel = _channel(sink, clock)
        _send(channel, 0)
        clock.now += KEEP_IDLE_SECONDS + 1
        _send(channel, 1)
        channel.close()
        assert len(set(sink.peers)) == 2


def test_a_failed_send_drops_the_connection_instead_of_keeping_it() -> None:
    """After an error (here a refused recipient) the next message starts on a new connection."""
    with running_peer_sink() as sink:
        sink.rcpt_replies.append("450 4.2.1 mailbox busy")
        channel = _channel(sink)
        with pytest.raises(DeliveryError):
            _send(channel, 0)
        assert channel._kept is None
        _send(channel, 1)
        channel.close()
        assert len(sink.peers) == 1
