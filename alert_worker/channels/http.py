"""The one translation of ``requests`` exceptions into our errors, shared by Slack and Twilio.

Modelled on httpx's ``map_exceptions``: a context manager around the call, each foreign exception mapped
once with ``raise ... from``. Reasons name the provider and the exception class only: ``str()`` of a
``requests`` exception quotes the URL, and for Slack the URL's path is the webhook secret.

    ReadTimeout, the send deadline passed,      outcome unknown (transient: the provider may have the
      or a connection dropped after the         request; SMS looks it up before resending), whatever
      request was written, or an answer whose   wraps it (ProxyError, MaxRetryError, bare RemoteDisconnected)
      body broke or cannot be decoded
    ConnectTimeout, other ConnectionError      transient (nothing was sent)
    InvalidURL, InvalidSchema, MissingSchema   permanent (the same request can never be made)
    any other RequestException                 transient

``DeadlineAdapter`` gives a whole request one wall-clock deadline (``requests``' timeout is per read).
"""

from __future__ import annotations

import http.client
import io
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3 import Timeout
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
)

from alert_worker.errors import OutcomeUnknownError, PermanentDeliveryError, TransientDeliveryError

_NEVER_VALID = (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema)
# Anywhere in the cause chain, these say the request may have reached the provider: the connection was open
# and the request on its way (or written) when it broke. http.client raises its HTTPException subclasses
# while reading the answer (RemoteDisconnected, BadStatusLine, IncompleteRead, LineTooLong), except the
# connection-state errors raised before a request is written.
_AFTER_SENDING: tuple[type[BaseException], ...] = (
    requests.ReadTimeout,
    ReadTimeoutError,
    ProtocolError,
    http.client.HTTPException,
    ConnectionResetError,
    BrokenPipeError,
    DecodeError,  # the status line came: the provider has the request, its answer cannot be read
    requests.exceptions.ContentDecodingError,
    requests.exceptions.ChunkedEncodingError,
)
_NOT_WRITTEN: tuple[type[BaseException], ...] = (http.client.ImproperConnectionState,)
# ... and these that nothing was sent: no connection (refused, DNS, connect timeout), or a proxy that refused
# the CONNECT tunnel.
_BEFORE_SENDING: tuple[type[BaseException], ...] = (
    requests.ConnectTimeout,
    ConnectTimeoutError,
    NewConnectionError,
    ConnectionRefusedError,
    socket.gaierror,
)
_TUNNEL_REFUSED = "Tunnel connection failed"


@contextmanager
def map_request_errors(provider: str) -> Iterator[None]:
    """Run an HTTP call; a ``requests`` exception leaves as ``Transient``/``PermanentDeliveryError``."""
    try:
        yield
    except requests.Timeout as exc:  # before ConnectionError: ConnectTimeout is both
        if outcome_unknown(exc):
            raise OutcomeUnknownError(f"{provider} no answer after sending: {type(exc).__name__}") from exc
        raise TransientDeliveryError(f"{provider} timeout: {type(exc).__name__}", definite=never_sent(exc)) from exc
    except (requests.ConnectionError, http.client.HTTPException, ConnectionError) as exc:
        if outcome_unknown(exc):
            raise OutcomeUnknownError(f"{provider} connection dropped after sending: {type(exc).__name__}") from exc
        reason = f"{provider} connection error: {type(exc).__name__}"
        raise TransientDeliveryError(reason, definite=never_sent(exc)) from exc
    except _NEVER_VALID as exc:
        raise PermanentDeliveryError(f"{provider} invalid request: {type(exc).__name__}", definite=True) from exc
    except requests.RequestException as exc:
        if outcome_unknown(exc):  # the answer came but broke or cannot be decoded
            raise OutcomeUnknownError(f"{provider} answer unreadable after sending: {type(exc).__name__}") from exc
        raise TransientDeliveryError(f"{provider} request error: {type(exc).__name__}") from exc


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps: ``__cause__``, ``__context__``, urllib3's ``reason`` and
    ``original_error``, and exceptions passed as arguments (requests and urllib3 wrap that way)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked: Iterable[Any] = (
            current.__cause__,
            current.__context__,
            getattr(current, "reason", None),
            getattr(current, "original_error", None),
            *current.args,
        )
        stack.extend(item for item in linked if isinstance(item, BaseException))


def outcome_unknown(exc: BaseException) -> bool:
    """True when the provider may have received the request although no answer came.

    The whole cause chain is read: behind a proxy urllib3 wraps a ``RemoteDisconnected`` after the request
    in its ``ProxyError`` (requests: ``ProxyError``), without a proxy in a ``ProtocolError``; either way the
    request was written. A refused connection, a DNS failure, a connect timeout or a proxy refusing the
    CONNECT happened before anything was sent.
    """
    chain = list(causes(exc))
    if any(isinstance(e, _BEFORE_SENDING) for e in chain) or any(_TUNNEL_REFUSED in str(e) for e in chain):
        return False
    return any(isinstance(e, _AFTER_SENDING) and not isinstance(e, _NOT_WRITTEN) for e in chain)



def never_sent(exc: BaseException) -> bool:
    """True only when the connection to the provider itself failed, so no byte of the request left.

    A connect timeout, or a ``ConnectionError`` whose cause is urllib3's ``ConnectTimeoutError`` or its
    subclasses ``NewConnectionError`` (refused, unreachable) and ``NameResolutionError`` (DNS). Anything
    through a proxy, or any other cause, is not known to be unsent.
    """
    if isinstance(exc, requests.exceptions.ProxyError):
        return False
    if isinstance(exc, requests.ConnectTimeout):
        return True
    for arg in exc.args:
        reason = arg.reason if isinstance(arg, MaxRetryError) else arg
        if isinstance(reason, ProxyError):
            return False
        if isinstance(reason, ConnectTimeoutError):
            return True
    return False


class DeadlineAdapter(HTTPAdapter):
    """Every request through it ends within ``budget_seconds`` of starting, however the answer trickles.

    Connecting and waiting for the status line share the budget (urllib3's ``Timeout(total=...)``); the
    body is then read in pieces, each socket read bounded by what is left. Past the deadline the request
    fails with ``ReadTimeout`` (an unknown outcome: the request was written) and its connection is dropped.
    The caller's own ``timeout`` is ignored: the budget replaces it.
    """

    def __init__(self, *, budget_seconds: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.budget_seconds = budget_seconds

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        deadline = time.monotonic() + self.budget_seconds
        budget: Any = Timeout(total=self.budget_seconds, connect=self.budget_seconds, read=self.budget_seconds)
        response = super().send(request, stream=True, timeout=budget, verify=verify, cert=cert, proxies=proxies)
        raw = response.raw
        try:
            body = _read_by(raw, deadline)
        except BaseException:
            raw.close()  # never hand a half-read connection back to the pool
            raise
        raw.release_conn()
        response.raw = io.BytesIO(body)  # already decoded; ``content`` reads it from here
        return response


def with_deadline(session: Any, budget_seconds: float) -> Any:
    """Mount a ``DeadlineAdapter`` on a ``requests.Session`` (for http and https); returns the session."""
    if session is not None and hasattr(session, "mount"):
        adapter = DeadlineAdapter(budget_seconds=budget_seconds)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
    return session


def _read_by(raw: Any, deadline: float) -> bytes:
    """The whole (decoded) body, or ``ReadTimeout`` once ``deadline`` (monotonic) has passed.

    urllib3's errors while reading are translated as ``requests`` translates them, except that a broken
    body is a ``ConnectionError`` (the status line came: the provider has the request), not a bare
    ``ChunkedEncodingError``.
    """
    pieces: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise requests.ReadTimeout("the send deadline passed while the answer was being read")
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        if sock is not None:
            sock.settimeout(left)
        try:
            piece = raw.read1(65536, decode_content=True)
        except ReadTimeoutError as exc:
            raise requests.ReadTimeout(exc) from exc
        except ProtocolError as exc:
            raise requests.ConnectionError(exc) from exc
        except DecodeError as exc:
            raise requests.exceptions.ContentDecodingError(exc) from exc
        if not piece:
            return b"".join(pieces)
        pieces.append(piece)
