"""A TCP proxy on loopback that can freeze: stop relaying both ways while every socket stays open.

This is a hung PgBouncer/HAProxy (or the frozen proxy of the f02 reproduction), not a silent network: the
kernel behind the proxy still acknowledges every segment and answers keepalive probes, so neither TCP
keepalives nor ``tcp_user_timeout`` ever fire (``silent_network.py`` is the silent-network fault). Only the
job timeout can end a call waiting on it. ``thaw()`` relays again, including what was held.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from psycopg.conninfo import conninfo_to_dict, make_conninfo


class FreezingProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.frozen = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, name="freezing-proxy-accept", daemon=True).start()

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        self.frozen.clear()

    def dsn(self, database_url: str) -> str:
        """``database_url`` with its host and port replaced by this proxy's."""
        params = conninfo_to_dict(database_url)
        params.update(host="127.0.0.1", port=str(self.port))
        params.pop("hostaddr", None)
        return make_conninfo(**params)  # type: ignore[arg-type]

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in [*sockets, self._listener]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                if self._closed.is_set():
                    return
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                readable, _, _ = select.select([a, b], [], [], 0.05)
                if self.frozen.is_set():
                    continue  # hold everything: nothing read, nothing forwarded, nothing closed
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()


@contextmanager
def freezing_proxy(target: tuple[str, int]) -> Iterator[FreezingProxy]:
    proxy = FreezingProxy(target)
    try:
        yield proxy
    finally:
        proxy.close()
