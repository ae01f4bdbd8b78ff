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

``DeadlineAdapter`` gives a whole request one wall-clock deadline (``requests``' timeout is per read): a
``RequestWatch`` timer cuts the connection's socket when the deadline passes, whatever the request is doing.
"""

from __future__ import annotations

import http.client
import io
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, Timeout
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
)
from urllib3.poolmanager import ProxyManager

from alert_worker.errors import OutcomeUnknownError, PermanentDeliveryError, TransientDeliveryError
from alert_worker.sockets import cut_socket

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


class RequestWatch:
    """One request's deadline: when ``budget_seconds`` pass before ``finish()``, the connection's socket is cut.

    A per-read socket timeout cannot bound a request whose status line and headers trickle in (http.client
    reads them a line, and a byte, at a time, each read under the timeout), so a timer thread shuts the
    socket down at the deadline (``sockets.cut_socket``): the blocked read returns at once. The connection
    classes below report to the watch of the request running in their thread (a ``ContextVar``): which
    connection it uses, and whether it is connecting or sending. Cut while connecting, or before the request
    was started, nothing was sent; cut later, the provider may have the request (``after_sending``).
    """

    def __init__(self, budget_seconds: float, *, cut: Callable[[int], bool] = cut_socket) -> None:
        self._cut = cut
        self._lock = threading.Lock()
        self._connection: Any = None
        self._connecting = False
        self._request_started = False
        self._finished = False
        self.fired = False
        self.after_sending = False
        self._timer = threading.Timer(budget_seconds, self.fire)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def fire(self) -> None:
        """The deadline: cut the connection's socket (if it has one yet), unless the request finished."""
        with self._lock:  # finish() takes it too: a socket handed back to the pool is never cut
            if self._finished or self.fired:
                return
            self.fired = True
            self.after_sending = self._request_started and not self._connecting
            self._cut_connection()

    def finish(self) -> bool:
        """The request is over (answered or failed): disarm. ``True`` when the deadline cut it first."""
        with self._lock:
            self._finished = True
        self._timer.cancel()
        return self.fired

    def connecting(self, connection: Any) -> None:
        with self._lock:
            self._connection, self._connecting = connection, True
            if self.fired:
                self._cut_connection()

    def connected(self) -> bool:
        """The connection attempt returned; ``True`` when the deadline passed meanwhile (send nothing)."""
        with self._lock:
            self._connecting = False
            return self.fired

    def sending(self, connection: Any) -> bool:
        """The request is about to be written on ``connection``; ``True`` when the deadline has passed."""
        with self._lock:
            self._connection = connection
            if self.fired:
                return True
            self._request_started = True
            return False

    def timeout(self) -> requests.Timeout:
        """What the cut request raises: a read timeout (unknown outcome) or, before sending, a connect timeout."""
        if self.after_sending:
            return requests.ReadTimeout("the send deadline passed after the request was sent")
        return requests.ConnectTimeout("the send deadline passed before the request was sent")

    def _cut_connection(self) -> None:
        sock = getattr(self._connection, "sock", None)  # set as soon as TCP connects, before any TLS handshake
        if sock is not None:
            try:
                fd = sock.fileno()
            except OSError:
                return
            self._cut(fd)


_watching: ContextVar[RequestWatch | None] = ContextVar("alert_worker_request_watch", default=None)


def _watched_connect(connection: Any, connect: Callable[[], None]) -> None:
    watch = _watching.get()
    if watch is None:
        connect()
        return
    watch.connecting(connection)
    try:
        connect()
    finally:
        late = watch.connected()
    if late:
        raise TimeoutError("the send deadline passed while connecting")


def _watched_request(connection: Any) -> None:
    watch = _watching.get()
    if watch is not None and watch.sending(connection):
        raise TimeoutError("the send deadline passed before the request was sent")


class WatchedHTTPConnection(HTTPConnection):
    """urllib3's connection, reporting its socket and its phase to the request's ``RequestWatch``."""

    def connect(self) -> None:
        _watched_connect(self, super().connect)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watched_request(self)
        super().request(*args, **kwargs)


class WatchedHTTPSConnection(HTTPSConnection):
    """``WatchedHTTPConnection`` for TLS (the socket is reported before the handshake, which it bounds too)."""

    def connect(self) -> None:
        _watched_connect(self, super().connect)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watched_request(self)
        super().request(*args, **kwargs)


class WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = WatchedHTTPConnection


class WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = WatchedHTTPSConnection


WATCHED_POOLS: dict[str, type[HTTPConnectionPool]] = {
    "http": WatchedHTTPConnectionPool,
    "https": WatchedHTTPSConnectionPool,
}


class DeadlineAdapter(HTTPAdapter):
    """Every request through it ends within ``budget_seconds`` of starting, however the answer trickles.

    A ``RequestWatch`` covers the whole request (connecting, writing, the status line, the headers, the
    body): at the deadline it cuts the connection's socket. urllib3's ``Timeout(total=...)`` bounds each
    socket operation as well, and the body is read in pieces, each socket read bounded by what is left.
    Past the deadline the request fails with ``ReadTimeout`` once the request was started (an unknown
    outcome), with ``ConnectTimeout`` before (nothing sent), and its connection is dropped. The caller's own
    ``timeout`` is ignored: the budget replaces it. Through a SOCKS proxy only the per-read bounds apply.
    """

    def __init__(self, *, budget_seconds: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.budget_seconds = budget_seconds

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, ProxyManager):  # an HTTP(S) proxy: connections made as without one
            manager.pool_classes_by_scheme = WATCHED_POOLS
        return manager

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
        watch = RequestWatch(self.budget_seconds)
        token = _watching.set(watch)
        watch.start()
        raw: Any = None
        try:
            response = super().send(request, stream=True, timeout=budget, verify=verify, cert=cert, proxies=proxies)
            raw = response.raw
            body = _read_by(raw, deadline)
        except BaseException as exc:
            if raw is not None:
                raw.close()  # never hand a half-read connection back to the pool
            if watch.finish() and isinstance(exc, Exception):  # a job timeout or an interrupt stays what it is
                raise watch.timeout() from exc
            raise
        finally:
            _watching.reset(token)
        if watch.finish():  # cut after the last byte came: what came may be a truncated answer
            raw.close()
            raise watch.timeout()
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
