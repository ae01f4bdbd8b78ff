"""A loopback HTTP/1.1 webhook that answers ``ok`` and counts the TCP connections it accepted and saw end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


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
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/kept"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
