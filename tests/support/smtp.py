"""A real loopback SMTP server (aiosmtpd) that records what it accepts and can be told to misbehave."""

from __future__ import annotations

import logging
import ssl
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.processes import free_port  # Controller(port=0) does not work


@dataclass
class Accepted:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes

    @property
    def message(self) -> Message:
        return message_from_bytes(self.content)


@dataclass
class SmtpSink:
    """Handler and record. Queue replies in ``data_replies`` / ``rcpt_replies`` to answer with errors;
    put ``"DROP"`` in ``data_replies`` to close the connection in the middle of DATA."""

    port: int = 0
    accepted: list[Accepted] = field(default_factory=list)
    data_replies: deque[str] = field(default_factory=deque)
    rcpt_replies: deque[str] = field(default_factory=deque)
    data_calls: int = 0
    auth_commands: int = 0  # AUTH exchanges the server judged (smtplib tries PLAIN, then LOGIN)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        with self.lock:
            reply = self.rcpt_replies.popleft() if self.rcpt_replies else None
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.data_calls += 1
            reply = self.data_replies.popleft() if self.data_replies else None
        if reply == "DROP":
            server.transport.abort()  # aiosmtpd's Session has no transport; the protocol does
            return "421 4.4.2 connection dropped"
        if reply:
            return reply
        with self.lock:
            self.accepted.append(Accepted(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 OK queued"

    def messages_to(self, address: str) -> list[Accepted]:
        with self.lock:
            return [m for m in self.accepted if address in m.rcpt_tos]


def _authenticator(user: str, password: str, sink: SmtpSink) -> Any:
    def check(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        with sink.lock:
            sink.auth_commands += 1
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and (auth_data.password.decode() == password)
        )
        # A failing authenticator must return handled=False or the client hangs (aiosmtpd quirk).
        return AuthResult(success=ok, handled=False)

    return check


@contextmanager
def running_smtp_sink(
    *,
    starttls_context: ssl.SSLContext | None = None,
    implicit_tls_context: ssl.SSLContext | None = None,
    login: tuple[str, str] | None = None,
) -> Iterator[SmtpSink]:
    # aiosmtpd logs every session at INFO from its own thread; in a test of a CLI that logs to stderr, a line
    # from an earlier test's session could land in this test's captured output. Set per sink: tests reset it.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    sink = SmtpSink(port=free_port())
    kwargs: dict[str, Any] = {}
    if starttls_context is not None:
        kwargs.update(tls_context=starttls_context, require_starttls=True)
    if login is not None:
        kwargs.update(
            authenticator=_authenticator(*login, sink),
            # aiosmtpd only knows about STARTTLS: with implicit TLS it would refuse AUTH if TLS were required.
            auth_require_tls=starttls_context is not None,
        )
        if implicit_tls_context is None and starttls_context is None:
            kwargs["auth_require_tls"] = False
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port, ssl_context=implicit_tls_context, **kwargs)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()
