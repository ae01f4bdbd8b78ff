"""Providers with latency for the bench: an SMTP sink and a webhook that answer after ``delay_ms``.

A real provider answers in 100-300 ms; on loopback the send is ~2 ms, which hides what a worker does
while it waits. Both servers wait without blocking each other (the SMTP sink awaits, the webhook
serves each request in its own thread), so N concurrent deliveries overlap as they would on the
network. Each records when it answered, keyed by the message's subject (the bench's delivery id), on
the clock the enqueuer uses (``time.time``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from aiosmtpd.controller import Controller

from bench.services import free_port, subject_of
from tests.support.http_server import respond, serving


@dataclass
class Answers:
    """When each delivery was answered, by key; shared by both servers."""

    accepted_at: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, key: str) -> None:
        now = time.time()
        with self.lock:
            self.accepted_at[key] = now

    def times(self, prefix: str) -> dict[str, float]:
        with self.lock:
            return {k: v for k, v in self.accepted_at.items() if k.startswith(prefix)}


@dataclass
class SlowSmtpSink(Answers):
    """Accepts every message ``delay_ms`` after its DATA arrives."""

    port: int = 0
    delay_ms: float = 0.0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000)
        self.record(subject_of(envelope.original_content))
        return "250 2.0.0 OK queued"


@contextmanager
def running_slow_smtp(delay_ms: float) -> Iterator[SlowSmtpSink]:
    sink = SlowSmtpSink(port=free_port(), delay_ms=delay_ms)
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@dataclass
class SlowWebhook(Answers):
    """Answers every POST ``ok`` after ``delay_ms``; keyed by the first word of the Slack text."""

    url: str = ""
    delay_ms: float = 0.0


@contextmanager
def running_slow_webhook(delay_ms: float) -> Iterator[SlowWebhook]:
    hook = SlowWebhook(delay_ms=delay_ms)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as Slack's webhooks: a kept session reuses its connection

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if hook.delay_ms:
                time.sleep(hook.delay_ms / 1000)  # this thread serves only this request
            try:
                text = str(json.loads(raw).get("text", ""))
            except ValueError:
                text = ""
            hook.record(text.replace("*", " ").split()[0] if text.strip() else "")
            respond(self, 200, b"ok")  # one write: no Nagle/delayed-ACK wait between headers and body

    with serving(Handler, name="bench-webhook") as base_url:
        hook.url = f"{base_url}/services/T000/B000/bench"
        yield hook
