"""Loopback providers the crash suite controls: an SMTP server, a Slack-compatible webhook server and
Twilio's Messages API (create and list, for the SMS unknown-outcome look-up).

Both follow a per-delivery *script*: a list of behaviours for that delivery's successive send attempts
(after the list runs out, ``ok``). Both record every message they accepted with the delivery id and a
receive timestamp, so duplicates and rolling-window rates are counted exactly, provider side.

Behaviours: ``ok`` · ``transient`` (SMTP 451 / HTTP 503) · ``permanent`` (SMTP 550 5.7.1 / HTTP 403: about
the message, so the recipient is not suppressed) ·
``throttle:S`` (HTTP 429 with ``Retry-After: S``; SMTP 451) · ``hang:S`` (say nothing for S seconds,
then drop the connection; nothing accepted) · ``slow:S`` (wait S seconds, then accept) ·
``accept_drop`` (record the message as accepted, then drop the connection without answering) · Twilio only:
``slow_answer:S`` (accept, then send the status line and each header line S seconds apart) and
``slow_body:S`` (accept, headers at once, then the body a byte every S seconds).

The delivery id is read from the e-mail Message-ID ``<{delivery_id}.{attempt}@domain>``, else from a
``[[did:{delivery_id}]]`` tag anywhere in the message (the suite puts it in every subject). A message that
carries held deliveries (docs/contract.md §8) is recorded once, for its carrier (the first tag), with the
ids it carried: from the e-mail header ``X-Alert-Carried-Ids``, or the further tags of a Slack text.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.controller import Controller

from tests.support.http_server import respond, serving
from tests.support.processes import free_port

_TAG = re.compile(r"\[\[did:([A-Za-z0-9_.-]+)\]\]")
_MESSAGE_ID = re.compile(r"<([A-Za-z0-9_.-]+)\.(\d+)@")


def tag(delivery_id: str) -> str:
    """What a producer puts in a subject so any provider can tell which delivery a message is."""
    return f"[[did:{delivery_id}]]"


@dataclass(frozen=True)
class Received:
    delivery_id: str
    channel: str
    at: float  # time.time() when the provider accepted it
    attempt: int | None = None
    carried: tuple[str, ...] = ()  # held deliveries this message carried (§8)


@dataclass
class ProviderLog:
    """Scripts in, acceptances out; shared by the SMTP and the webhook server, thread-safe."""

    scripts: dict[str, list[str]] = field(default_factory=dict)
    default_script: list[str] = field(default_factory=list)
    accepted: list[Received] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_behaviour(self, delivery_id: str | None) -> str:
        if delivery_id is None:
            return "ok"
        with self.lock:
            n = self.calls[delivery_id]
            self.calls[delivery_id] = n + 1
            script = self.scripts.get(delivery_id, self.default_script)
        return script[n] if n < len(script) else "ok"

    def record(self, delivery_id: str, channel: str, attempt: int | None = None, carried: tuple[str, ...] = ()) -> None:
        with self.lock:
            self.accepted.append(Received(delivery_id, channel, time.time(), attempt, carried))

    def accepted_counts(self) -> Counter[str]:
        """Messages accepted per delivery id, a carried delivery counting the message that carried it."""
        with self.lock:
            return Counter(i for r in self.accepted for i in (r.delivery_id, *r.carried))

    def messages(self) -> list[Received]:
        with self.lock:
            return list(self.accepted)

    def receive_times(self) -> list[float]:
        with self.lock:
            return sorted(r.at for r in self.accepted)

    def reset(self) -> None:
        with self.lock:
            self.scripts.clear()
            self.default_script = []
            self.accepted.clear()
            self.calls.clear()


def max_window_rate(times: list[float], window_seconds: float) -> int:
    """The most acceptances inside any closed window of ``window_seconds`` (two-pointer sweep)."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while ordered[start] < t - window_seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


def _seconds(behaviour: str) -> float:
    return float(behaviour.split(":", 1)[1]) if ":" in behaviour else 1.0


def carried_of(raw: bytes) -> tuple[str, ...]:
    """The ids an e-mail carried (its ``X-Alert-Carried-Ids`` header, percent-decoded), else ``()``."""
    header = message_from_bytes(raw).get("X-Alert-Carried-Ids")
    if not header:
        return ()
    text = " ".join(str(header).split())
    return tuple(urllib.parse.unquote(part.strip()) for part in text.split(",") if part.strip())


def delivery_of(raw: bytes) -> tuple[str | None, int | None]:
    """(delivery id, attempt) from an e-mail's Message-ID, else (tagged id, None)."""
    message_id = message_from_bytes(raw).get("Message-ID", "")
    found = _MESSAGE_ID.search(str(message_id))
    if found:
        return found.group(1), int(found.group(2))
    tagged = _TAG.search(raw.decode("utf-8", "replace"))
    return (tagged.group(1), None) if tagged else (None, None)


class _SmtpHandler:
    def __init__(self, log: ProviderLog) -> None:
        self.log = log

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content or b""
        delivery_id, attempt = delivery_of(raw if isinstance(raw, bytes) else raw.encode())
        behaviour = self.log.next_behaviour(delivery_id)
        kind = behaviour.split(":", 1)[0]
        if kind in ("hang", "slow"):
            await asyncio.sleep(_seconds(behaviour))
        if kind == "hang":
            server.transport.abort()
            return "421 4.4.2 dropped"
        if kind in ("transient", "throttle"):
            return "451 4.3.0 try again later"
        if kind == "permanent":
            return "550 5.7.1 message refused"
        if delivery_id is not None:
            self.log.record(delivery_id, "email", attempt, carried_of(raw if isinstance(raw, bytes) else raw.encode()))
        if kind == "accept_drop":
            server.transport.abort()
            return "421 4.4.2 dropped"
        return "250 2.0.0 OK queued"


@contextmanager
def running_smtp(log: ProviderLog) -> Iterator[int]:
    """A loopback SMTP server (plain, no auth) following ``log``'s scripts; yields its port."""
    port = free_port()
    controller = Controller(_SmtpHandler(log), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def _slack_tags(raw: bytes) -> list[str]:
    """The delivery tags of a Slack post's ``text`` (the notification text; its Block Kit blocks repeat each
    alert), in order, each once: the carrier's first, then the ones it carried."""
    try:
        text = json.loads(raw or b"{}").get("text", "")
    except (ValueError, AttributeError):
        text = raw.decode("utf-8", "replace")
    return list(dict.fromkeys(_TAG.findall(str(text))))


class _WebhookHandler(BaseHTTPRequestHandler):
    log_book: ProviderLog  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the suite prints its own summary

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        tags = _slack_tags(raw)
        delivery_id = tags[0] if tags else None
        behaviour = self.log_book.next_behaviour(delivery_id)
        kind = behaviour.split(":", 1)[0]
        if kind in ("hang", "slow"):
            time.sleep(_seconds(behaviour))  # this thread serves only this request
        if kind == "hang":
            self.close_connection = True
            self.connection.close()
            return
        if kind == "transient":
            self._answer(503, b"service unavailable")
        elif kind == "throttle":
            self._answer(429, b"rate_limited", {"Retry-After": str(int(_seconds(behaviour)))})
        elif kind == "permanent":
            self._answer(403, b"action_prohibited")
        else:
            try:
                json.loads(raw or b"{}")
            except ValueError:
                self._answer(400, b"invalid_payload")
                return
            if delivery_id is not None:
                self.log_book.record(delivery_id, "slack", carried=tuple(tags[1:]))
            if kind == "accept_drop":
                self.close_connection = True
                self.connection.close()
                return
            self._answer(200, b"ok")

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        # A broken pipe here: the worker was killed after we accepted, the very fault under test, not a server error.
        with suppress(BrokenPipeError, ConnectionResetError):
            respond(self, status, body, {**(headers or {}), "Content-Type": "text/plain"})


@contextmanager
def running_webhook(log: ProviderLog) -> Iterator[str]:
    """A loopback Slack-compatible webhook server; yields its base URL ``http://127.0.0.1:PORT``."""
    handler = type("ScriptedWebhook", (_WebhookHandler,), {"log_book": log})
    with serving(handler, name="fake-webhook") as base_url:
        yield base_url


class _TwilioHandler(BaseHTTPRequestHandler):
    log_book: ProviderLog  # set on the subclass made per server
    messages: list[dict[str, Any]]  # every message accepted, for GET (the look-up)
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
        text = form.get("Body", [""])[0]
        tagged = _TAG.search(text)
        delivery_id = tagged.group(1) if tagged else None
        behaviour = self.log_book.next_behaviour(delivery_id)
        kind = behaviour.split(":", 1)[0]
        if kind == "transient":
            self._write(b"HTTP/1.1 503 Service Unavailable", b'{"code": 20500, "status": 503}')
            return
        message = {"sid": f"SM{len(self.messages) + 1:032d}", "to": form["To"][0], "from": form.get("From", [""])[0],
                   "body": text, "status": "queued", "messaging_service_sid": None,
                   "date_created": format_datetime(datetime.now(UTC), usegmt=True)}  # fmt: skip
        self.messages.append(message)
        if delivery_id is not None:
            self.log_book.record(delivery_id, "sms")
        data = json.dumps(message).encode()
        lines = [b"HTTP/1.1 201 CREATED", b"Content-Type: application/json", f"Content-Length: {len(data)}".encode()]
        try:
            if kind == "slow_answer":
                for line in [*lines, *(f"X-Slow-{i}: 1".encode() for i in range(5))]:
                    time.sleep(_seconds(behaviour))
                    self.wfile.write(line + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"\r\n" + data)
            elif kind == "slow_body":
                self.wfile.write(b"\r\n".join(lines) + b"\r\n\r\n")
                self.wfile.flush()
                for byte in data:
                    time.sleep(_seconds(behaviour))
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
            else:
                self.wfile.write(b"\r\n".join(lines) + b"\r\n\r\n" + data)
        except OSError:
            self.close_connection = True  # the worker gave up on the answer: the message stays accepted

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        to, sender = query.get("To", [None])[0], query.get("From", [None])[0]
        found = [m for m in reversed(self.messages) if to in (None, m["to"]) and sender in (None, m["from"])]
        page = {"messages": found[:50], "next_page_uri": None, "page": 0, "page_size": 50, "uri": "/x"}
        self._write(b"HTTP/1.1 200 OK", json.dumps(page).encode())

    def _write(self, status: bytes, data: bytes) -> None:
        head = status + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(data)).encode()
        self.wfile.write(head + b"\r\n\r\n" + data)


@contextmanager
def running_twilio(log: ProviderLog) -> Iterator[str]:
    """A loopback Twilio Messages API following ``log``'s scripts; yields its base URL ``http://127.0.0.1:PORT``.

    Workers reach it through ``tests.support.fake_twilio`` (their Twilio client's base URL redirected).
    """
    handler = type("ScriptedTwilio", (_TwilioHandler,), {"log_book": log, "messages": []})
    with serving(handler, name="fake-twilio") as base_url:
        yield base_url
