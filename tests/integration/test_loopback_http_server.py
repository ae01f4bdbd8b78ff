"""The loopback HTTP servers of the tests and the bench answer in one piece (no ~40 ms Nagle/delayed-ACK wait).

A response written as headers, then body, reaches a keep-alive client in two parts: the body waits for the
client's delayed ACK of the headers (~40 ms per request). ``respond`` writes it whole; ``serving`` also
turns Nagle off, so a handler that still writes twice is not held back.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from tests.support.http_server import respond, serving

BODY = b"ok" * 8
REQUEST = b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"


def _handler(answer: Callable[[BaseHTTPRequestHandler], None]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the case where delayed ACK holds the body back

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            answer(self)

    return Handler


def _one_write(handler: BaseHTTPRequestHandler) -> None:
    respond(handler, 200, BODY, {"Content-Type": "text/plain"})


def _headers_then_body(handler: BaseHTTPRequestHandler) -> None:
    """``BaseHTTPRequestHandler``'s own way: two writes."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(BODY)))
    handler.end_headers()
    handler.wfile.write(BODY)


def _first_reads(base_url: str, requests: int) -> list[bytes]:
    """What the first ``recv`` returns for each of ``requests`` requests on one kept connection."""
    parts = urlsplit(base_url)
    firsts = []
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        for _ in range(requests):
            conn.sendall(REQUEST)
            first = conn.recv(65536)
            firsts.append(first)
            rest = first
            while not rest.endswith(BODY):  # drain the rest of this response before the next request
                more = conn.recv(65536)
                assert more, f"connection closed mid-response: {rest!r}"
                rest += more
    return firsts


def test_each_response_on_a_kept_connection_arrives_whole_in_the_first_read() -> None:
    """Status, headers and body together, request after request on the same connection."""
    with serving(_handler(_one_write)) as base_url:
        firsts = _first_reads(base_url, requests=20)
    assert all(first.startswith(b"HTTP/1.1 200 OK\r\n") for first in firsts), firsts
    assert [first.endswith(b"\r\n\r\n" + BODY) for first in firsts] == [True] * 20, firsts


def test_serving_turns_nagle_off_on_every_connection() -> None:
    """A handler that still writes headers and body apart is not held back by Nagle."""
    seen: list[int] = []

    def answer(handler: BaseHTTPRequestHandler) -> None:
        seen.append(handler.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        _headers_then_body(handler)

    with serving(_handler(answer)) as base_url:
        _first_reads(base_url, requests=2)
        _first_reads(base_url, requests=1)
    assert len(seen) == 3
    assert all(seen), seen


def test_respond_writes_status_line_headers_length_and_body_in_one_write() -> None:
    """One ``wfile.write`` call with the whole response; the phrase is the standard one."""
    written: list[bytes] = []

    class Recorder:
        def write(self, data: bytes) -> int:
            written.append(data)
            return len(data)

    handler = _handler(_one_write).__new__(_handler(_one_write))
    handler.wfile = Recorder()  # type: ignore[assignment]
    respond(handler, 429, b"rate_limited", {"Retry-After": "3"})
    assert written == [b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 12\r\n\r\nrate_limited"]
