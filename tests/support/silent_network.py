"""A route to a TCP server that can go silent: no RST, no answer, as a partition or a dead host looks.

A proxy on loopback that only stops relaying cannot stand in for this: the kernel behind it still
acknowledges every segment and answers keepalive probes, so ``tcp_user_timeout`` and keepalives (what
bounds a call on a real partition) never fire. So the relay listens inside a private network namespace,
reached over a veth pair; ``silence()`` takes the namespace's end of the link down, after which the
client's segments and probes are dropped without a word, and ``heal()`` brings it back. The relay itself
(threads of this process) forwards to the real server on loopback and never stops.

Needs root (``ip netns``/``ip link``), as the cluster suite does; ``silent_link_or_skip`` skips otherwise.
Names and the /30 subnet are per link, so parallel test sessions do not meet.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

_CLONE_NEWNET = 0x40000000
_counter = itertools.count()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class SilentLink:
    """A relay to ``target`` reachable at ``address`` (host, port) through a link ``silence()`` cuts."""

    def __init__(self, target: tuple[str, int]) -> None:
        n = next(_counter)
        tag = f"{os.getpid() % 100000:05d}{n % 10}"
        self.namespace = f"awsl-{tag}"
        self._outside, self._inside = f"awsla{tag}", f"awslb{tag}"
        block = (os.getpid() * 7 + n) % (256 * 64)
        base = f"10.215.{block // 64}.{(block % 64) * 4}"
        prefix = base.rsplit(".", 1)[0]
        last = int(base.rsplit(".", 1)[1])
        self._outside_address, self._inside_address = f"{prefix}.{last + 1}", f"{prefix}.{last + 2}"
        self._target = target
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.address: tuple[str, int] = ("", 0)

    # -- set-up and tear-down ------------------------------------------------------------------------
    def open(self) -> None:
        _ip("netns", "add", self.namespace)
        _ip("link", "add", self._outside, "type", "veth", "peer", "name", self._inside, "netns", self.namespace)
        _ip("addr", "add", f"{self._outside_address}/30", "dev", self._outside)
        _ip("link", "set", self._outside, "up")
        _ip("-n", self.namespace, "addr", "add", f"{self._inside_address}/30", "dev", self._inside)
        _ip("-n", self.namespace, "link", "set", self._inside, "up")
        self._listener = self._listen_inside()
        self.address = (self._inside_address, int(self._listener.getsockname()[1]))
        threading.Thread(target=self._accept, name=f"{self.namespace}-accept", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in [*sockets, *([self._listener] if self._listener else [])]:
            with contextlib.suppress(OSError):
                sock.close()
        with contextlib.suppress(subprocess.SubprocessError):
            _ip("netns", "del", self.namespace)  # removes both ends of the veth pair

    # -- the fault -------------------------------------------------------------------------------------
    def silence(self) -> None:
        """From now on nothing crosses the link either way, and nobody is told."""
        _ip("-n", self.namespace, "link", "set", self._inside, "down")

    def heal(self) -> None:
        _ip("-n", self.namespace, "link", "set", self._inside, "up")

    def dsn(self, database_url: str) -> str:
        """``database_url`` with its host and port replaced by this link's."""
        params = conninfo_to_dict(database_url)
        params.update(host=self.address[0], port=str(self.address[1]))
        params.pop("hostaddr", None)
        return make_conninfo(**params)  # type: ignore[arg-type]

    # -- the relay ---------------------------------------------------------------------------------------
    def _listen_inside(self) -> socket.socket:
        """A listening socket created inside the namespace (a socket keeps the namespace it was made in)."""
        made: dict[str, socket.socket | BaseException] = {}

        def make() -> None:  # setns changes only this short-lived thread's namespace
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(f"/var/run/netns/{self.namespace}", os.O_RDONLY)
                try:
                    if libc.setns(fd, _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                finally:
                    os.close(fd)
                listener = socket.socket()
                listener.bind((self._inside_address, 0))
                listener.listen(64)
                made["socket"] = listener
            except BaseException as exc:  # handed to the caller's thread
                made["error"] = exc

        thread = threading.Thread(target=make, name=f"{self.namespace}-setns")
        thread.start()
        thread.join()
        if "error" in made:
            raise made["error"]  # type: ignore[misc]
        found = made["socket"]
        assert isinstance(found, socket.socket)
        return found

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self._target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def database_target(database_url: str) -> tuple[str, int]:
    params = conninfo_to_dict(database_url)
    return str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)


class Unavailable(Exception):
    """No network namespace can be made here (not root, no iproute2, or the kernel refuses)."""


@contextmanager
def silent_link(target: tuple[str, int]) -> Iterator[SilentLink]:
    """A ``SilentLink`` to ``target``, removed afterwards; ``Unavailable`` where namespaces cannot be made."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise Unavailable("a silent network needs root and iproute2 (a network namespace), as the cluster suite")
    link = SilentLink(target)
    try:
        link.open()
    except (OSError, subprocess.SubprocessError) as exc:
        link.close()
        raise Unavailable(f"cannot make a network namespace here: {exc}") from None
    try:
        yield link
    finally:
        link.close()


@contextmanager
def silent_link_or_skip(target: tuple[str, int]) -> Iterator[SilentLink]:
    """``silent_link`` for a test: skipped, with the reason, where it is unavailable."""
    try:
        opened = silent_link(target)
        link = opened.__enter__()
    except Unavailable as exc:
        pytest.skip(str(exc))
    try:
        yield link
    finally:
        opened.__exit__(None, None, None)
