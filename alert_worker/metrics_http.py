"""The ``/metrics`` HTTP server: a daemon thread in the worker's parent, bounded against slow clients.

At most ``MAX_HANDLER_THREADS`` handlers run at once (further connections wait to be accepted, briefly),
and a client has ``REQUEST_READ_SECONDS`` to send its whole request head: half-sent requests can neither
hold a thread for long nor pile threads up (docs/contract.md §7.6). One request per connection; nothing is
logged (a request line may be anything a client sent).
"""

from __future__ import annotations

import io
import socket
import sys
import threading
import time
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import structlog
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

log = structlog.get_logger("alert_worker.metrics")

MAX_HANDLER_THREADS = 8  # concurrent HTTP handlers; Prometheus scrapes one at a time per target
REQUEST_READ_SECONDS = 3.0  # a client has this long to send its request line and headers
SLOT_WAIT_SECONDS = 1.0  # an accepted connection waits this long for a free handler, then is closed
SOCKET_TIMEOUT_SECONDS = 10.0  # any one read or write on a client socket


class _Handler(WSGIRequestHandler):
    """One request per connection, read within ``REQUEST_READ_SECONDS`` in all; logs nothing."""

    timeout = SOCKET_TIMEOUT_SECONDS

    def setup(self) -> None:
        super().setup()
        unused, self.rfile = self.rfile, io.BytesIO(self._request_head())
        unused.close()

    def _request_head(self) -> bytes:
        """The request line and headers, or what came of them before the deadline (then served as bad)."""
        head = bytearray()
        deadline = time.monotonic() + REQUEST_READ_SECONDS
        try:
            while b"\r\n\r\n" not in head and len(head) <= 65536:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return b""
                self.connection.settimeout(remaining)
                chunk = self.connection.recv(4096)
                if not chunk:
                    break
                head += chunk
        except OSError:  # the deadline passed inside recv, or the client reset
            return b""
        finally:
            self.connection.settimeout(self.timeout)
        return bytes(head)

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing (a request line may be anything a client sent)."""


class _BoundedServer(ThreadingWSGIServer):
    """At most ``MAX_HANDLER_THREADS`` handlers at once; further connections wait to be accepted.

    A scrape takes milliseconds, so a burst of scrapes is served in turn; a connection accepted while
    every handler is busy for ``SLOT_WAIT_SECONDS`` (half-sent requests holding them) is closed unanswered.
    Every accepted connection is thus answered or dropped within its read deadline plus the slot wait.
    """

    request_queue_size = 64  # connections the kernel holds while every handler is busy

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_HANDLER_THREADS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(timeout=SLOT_WAIT_SECONDS):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One structured line instead of socketserver's traceback on stderr (a client hung up, mostly)."""
        log.warning("metrics_request_failed", error=type(sys.exc_info()[1]).__name__)


class MetricsServer:
    """``ALERT_METRICS_PORT``: a daemon HTTP thread serving ``/metrics`` from the worker's parent process."""

    def __init__(self, *, collector: Collector, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104
        family, _, _, _, sockaddr = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]

        class Server(_BoundedServer):
            address_family = family

        self._collector = collector
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        self._server = make_server(str(sockaddr[0]), port, make_wsgi_app(registry), Server, handler_class=_Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="alert-metrics", daemon=True)
        self._thread.start()
        self.port = int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        close = getattr(self._collector, "close", None)  # AlertCollector's kept connections
        if close is not None:
            close()
