"""Loopback providers the crash suite controls: an SMTP server and a Slack-compatible webhook server.

Both follow a per-delivery *script*: a list of behaviours for that delivery's successive send attempts
(after the list runs out, ``ok``). Both record every message they accepted with the delivery id and a
receive timestamp, so duplicates and rolling-window rates are counted exactly, provider side.

Behaviours: ``ok`` · ``transient`` (SMTP 451 / HTTP 503) · ``permanent`` (SMTP 550 5.7.1 / HTTP 403: about
the message, so the recipient is not suppressed) ·
``throttle:S`` (HTTP 429 with ``Retry-After: S``; SMTP 451) · ``hang:S`` (say nothing for S seconds,
then drop the connection; nothing accepted) · ``slow:S`` (wait S seconds, then accept) ·
``accept_drop`` (record the message as accepted, then drop the connection without answering).

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
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.http_server import serving
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


class _WebhookHandler(BaseHTTPRequestHandler):
    log_book: ProviderLog  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the suite prints its own summary

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        tags = _TAG.findall(raw.decode("utf-8", "replace"))
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
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        try:
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the worker was killed after we accepted: the very fault under test, not a server error


@contextmanager
def running_webhook(log: ProviderLog) -> Iterator[str]:
    """A loopback Slack-compatible webhook server; yields its base URL ``http://127.0.0.1:PORT``."""
    handler = type("ScriptedWebhook", (_WebhookHandler,), {"log_book": log})
    with serving(handler, name="fake-webhook") as base_url:
        yield base_url
