"""An SMTP sink whose DATA waits on a gate: a delivery that is slow exactly as long as a test wants."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from aiosmtpd.controller import Controller

from tests.support.processes import free_port
from tests.support.smtp import SmtpSink


@dataclass
class GatedSmtpSink(SmtpSink):
    """``entered`` is set when a DATA arrives; the reply waits until ``gate`` is set. A client that hung
    up meanwhile (its work-horse was killed) is not recorded as accepted."""

    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.entered.set()
        while not self.gate.is_set():
            await asyncio.sleep(0.02)
        transport = getattr(server, "transport", None)  # the protocol holds it, not the session
        if transport is not None and transport.is_closing():
            return "421 4.4.2 client went away"
        return await super().handle_DATA(server, session, envelope)


class Gated(Protocol):
    port: int
    gate: threading.Event


G = TypeVar("G", bound=Gated)


@contextmanager
def serving_gated(sink: G) -> Iterator[G]:
    """Serve a sink whose DATA waits on ``gate``; the gate opens on the way out so the server can stop."""
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        sink.gate.set()
        controller.stop()


@contextmanager
def running_gated_sink() -> Iterator[GatedSmtpSink]:
    with serving_gated(GatedSmtpSink(port=free_port())) as sink:
        yield sink
