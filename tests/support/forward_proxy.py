"""A loopback forwarding HTTP proxy (plain http targets, absolute-form requests) for the proxy-path tests.

Each request is forwarded to its target and the answer relayed, one request per client connection; with
``drop_after_forwarding`` set, the next POST is forwarded (the provider has it) and the client's connection
is then closed without an answer: the fault of a proxy losing the connection after the request went on.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class ProxyControl:
    url: str = ""
    drop_after_forwarding: int = 0  # how many POSTs to forward and then drop
    forwarded: list[str] = field(default_factory=list)  # "METHOD path" of every forwarded request
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_drop(self, method: str) -> bool:
        with self.lock:
            if method == "POST" and self.drop_after_forwarding > 0:
                self.drop_after_forwarding -= 1
                return True
            return False


def _read_request(stream: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = stream.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = stream.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _read_response(upstream: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = upstream.recv(65536)
        if not chunk:
            return data
        data += chunk


class _Handler(socketserver.BaseRequestHandler):
    control: ProxyControl  # set on the subclass made per proxy

    def handle(self) -> None:
        raw = _read_request(self.request)
        if not raw:
            return
        head, _, body = raw.partition(b"\r\n\r\n")
        request_line, *headers = head.split(b"\r\n")
        method, target, version = request_line.decode().split(" ", 2)
        parts = urlsplit(target)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        kept = [h for h in headers if not h.lower().startswith((b"proxy-", b"connection:"))]
        forwarded = b"\r\n".join([f"{method} {path} {version}".encode(), *kept, b"Connection: close"])
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=30) as upstream:
            upstream.sendall(forwarded + b"\r\n\r\n" + body)
            answer = _read_response(upstream)
        with self.control.lock:
            self.control.forwarded.append(f"{method} {parts.path}")
        if self.control.take_drop(method):
            return  # the provider has the request; the client gets no answer (the socket closes here)
        status_and_headers, _, content = answer.partition(b"\r\n\r\n")
        self.request.sendall(status_and_headers + b"\r\nConnection: close\r\n\r\n" + content)  # one per connection


@contextmanager
def running_forward_proxy() -> Iterator[ProxyControl]:
    control = ProxyControl()
    handler = type("ForwardProxyHandler", (_Handler,), {"control": control})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="forward-proxy", daemon=True)
    thread.start()
    control.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield control
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
