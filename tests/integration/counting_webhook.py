"""A loopback HTTP/1.1 webhook that answers ``ok`` and counts the TCP connections it accepted and saw end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.http_server import respond, serving


@dataclass
class CountingWebhook:
    url: str = ""
    posts: int = 0
    accepted: int = 0  # connections opened by clients
    ended: int = 0  # connections closed (by the client, or by the server on shutdown)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)


@contextmanager
def running_counting_webhook() -> Iterator[CountingWebhook]:
    """Keep-alive on (HTTP/1.1 with Content-Length), so a client that reuses its session reuses connections."""
    hook = CountingWebhook()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def setup(self) -> None:
            hook.count("accepted")
            super().setup()

        def finish(self) -> None:
            super().finish()
            hook.count("ended")

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hook.count("posts")
            respond(self, 200, b"ok")

    with serving(Handler) as base_url:
        hook.url = f"{base_url}/services/T000/B000/kept"
        yield hook
