"""An SMTP sink that holds every DATA until a gate opens and counts how many wait at once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.support.gated_smtp import serving_gated
from tests.support.processes import free_port
from tests.support.smtp import SmtpSink


@dataclass
class CountingSink(SmtpSink):
    """DATA waits until ``gate``; records how many DATA commands were waiting at once."""

    gate: threading.Event = field(default_factory=threading.Event)
    inside: int = 0
    most_inside: int = 0
    observed: list[dict[str, int]] = field(default_factory=list)
    probe: Any = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        if self.probe is not None:
            self.observed.append(self.probe())
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        with self.lock:
            self.inside -= 1
        return await super().handle_DATA(server, session, envelope)


@contextmanager
def running_counting_sink() -> Iterator[CountingSink]:
    with serving_gated(CountingSink(port=free_port())) as sink:
        yield sink
