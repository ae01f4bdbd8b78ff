"""An SMTP sink whose DATA waits on a gate: a delivery that is slow exactly as long as a test wants."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.smtp import SmtpSink, free_port


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


@contextmanager
def running_gated_sink() -> Iterator[GatedSmtpSink]:
    sink = GatedSmtpSink(port=free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        sink.gate.set()
        controller.stop()
