"""A loopback stand-in for Twilio's Messages API (create and list) for tests that need real sockets.

``running_fake_twilio()`` yields a ``FakeTwilio``: each POST follows the next scripted behaviour (default
``accept``), every message it accepted is kept (SID, to, from, body, ``date_created``) and listed newest
first by GET, filtered by ``To``/``From`` as Twilio does. ``redirected_to(base_url)`` points twilio's HTTP
client at it in this process; ``python -m tests.support.fake_twilio BASE_URL ARGS...`` runs ``alert-worker
ARGS`` with the same redirect (for worker subprocesses).

Behaviours:  ``accept`` · ``drop`` (read the request, close without answering, nothing accepted: it never
reached Twilio) · ``trickle_body:S`` (accept, send the headers, then the body a byte every S seconds) ·
``trickle_headers:S`` (accept, then the status line and one header line every S seconds, eight lines) ·
``broken_gzip`` (accept, answer 201 with ``Content-Encoding: gzip`` on a body that is not gzip).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.http_server import serving

TWILIO_BASE = "https://api.twilio.com"


@dataclass
class FakeTwilio:
    base_url: str = ""
    script: deque[str] = field(default_factory=deque)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    posts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accept(self, *, to: str, from_: str, body: str) -> dict[str, Any]:
        """Keep a message as Twilio would (also for one sent by someone else: a test's "external" send)."""
        with self.lock:
            message = {
                "sid": f"SM{len(self.accepted) + 1:032d}",
                "to": to,
                "from": from_,
                "body": body,
                "status": "queued",
                "messaging_service_sid": None,
                "date_created": format_datetime(datetime.now(UTC), usegmt=True),
            }
            self.accepted.append(message)
            return message

    def next_behaviour(self) -> str:
        with self.lock:
            self.posts += 1
            return self.script.popleft() if self.script else "accept"

    def listed(self, to: str | None, from_: str | None) -> list[dict[str, Any]]:
        with self.lock:
            found = [m for m in reversed(self.accepted) if to in (None, m["to"]) and from_ in (None, m["from"])]
        return found


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeTwilio  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
        behaviour = self.fake.next_behaviour()
        kind, _, arg = behaviour.partition(":")
        if kind == "drop":
            self.close_connection = True
            self.connection.close()
            return
        message = self.fake.accept(to=form["To"][0], from_=form.get("From", [""])[0], body=form["Body"][0])
        data = json.dumps(message).encode()
        head = [b"HTTP/1.1 201 CREATED", b"Content-Type: application/json", f"Content-Length: {len(data)}".encode()]
        if kind == "broken_gzip":  # a middlebox mangled the answer: the client cannot decode it
            head.append(b"Content-Encoding: gzip")
        try:
            if kind == "trickle_headers":
                for line in [*head, *(f"X-Slow-{i}: 1".encode() for i in range(5))]:
                    time.sleep(float(arg))
                    self.wfile.write(line + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"\r\n" + data)
            elif kind == "trickle_body":
                self.wfile.write(b"\r\n".join(head) + b"\r\n\r\n")
                self.wfile.flush()
                for byte in data:
                    time.sleep(float(arg))
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
            else:
                self.wfile.write(b"\r\n".join(head) + b"\r\n\r\n" + data)  # one write: no Nagle wait
        except OSError:
            self.close_connection = True  # the client gave up on the answer: the message stays accepted

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        found = self.fake.listed(query.get("To", [None])[0], query.get("From", [None])[0])
        data = json.dumps({"messages": found, "next_page_uri": None, "page": 0, "page_size": 50, "uri": "/x"}).encode()
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(data)).encode() + b"\r\n\r\n" + data
        )  # fmt: skip


@contextmanager
def running_fake_twilio() -> Iterator[FakeTwilio]:
    fake = FakeTwilio()
    handler = type("FakeTwilioHandler", (_Handler,), {"fake": fake})
    with serving(handler, name="fake-twilio") as base_url:
        fake.base_url = base_url
        yield fake


def redirect_twilio(base_url: str) -> Any:
    """Patch twilio's HTTP client so requests to api.twilio.com go to ``base_url``; returns the undo."""
    from twilio.http.http_client import TwilioHttpClient

    original = TwilioHttpClient.request

    def request(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        return original(self, method, url.replace(TWILIO_BASE, base_url), *args, **kwargs)

    TwilioHttpClient.request = request  # type: ignore[method-assign]

    def undo() -> None:
        TwilioHttpClient.request = original  # type: ignore[method-assign]

    return undo


@contextmanager
def redirected_to(base_url: str) -> Iterator[None]:
    undo = redirect_twilio(base_url)
    try:
        yield
    finally:
        undo()


if __name__ == "__main__":  # python -m tests.support.fake_twilio BASE_URL alert-worker-args...
    redirect_twilio(sys.argv[1])
    from alert_worker.cli import main

    sys.exit(main(sys.argv[2:]))
