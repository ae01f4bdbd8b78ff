"""One way to run a loopback HTTP server in a thread for tests and the bench: started, yielded, stopped.

Handlers answer with ``respond``: status line, headers and body in one write. ``BaseHTTPRequestHandler``'s
own ``end_headers()`` then ``wfile.write(body)`` is two writes, and with Nagle on the server and delayed ACK
on a keep-alive client every request waits ~40 ms for the body; ``serving`` also sets ``TCP_NODELAY``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def respond(
    handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None
) -> None:
    """Write the whole response (status line, ``headers``, ``Content-Length``, body) in one write."""
    phrase = handler.responses.get(status, ("",))[0]
    lines = [f"{handler.protocol_version} {status} {phrase}".rstrip()]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines.append(f"Content-Length: {len(body)}")
    handler.wfile.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler], *, name: str = "loopback-http") -> Iterator[str]:
    """Serve ``handler`` on a free 127.0.0.1 port; yields ``http://127.0.0.1:PORT``; shut down on the way out."""
    no_delay = type(handler.__name__, (handler,), {"disable_nagle_algorithm": True})
    server = ThreadingHTTPServer(("127.0.0.1", 0), no_delay)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
