"""Three simulated hosts: Linux network namespaces on one bridge, made and removed by the suite.

Layout (one private /24 used only here, ``10.213.47.0/24``):
- bridge ``awc-br0`` in the root namespace, address ``10.213.47.1``: every service the workers use
  (Redis or Sentinel, PgBouncer in front of Postgres, the SMTP sink) listens there, never on loopback;
- host ``i`` (1-3): namespace ``awc-host<i>``, veth ``awc-v<i>`` (bridge side) / ``awc-n<i>`` (renamed
  ``eth0`` inside), address ``10.213.47.1<i>``.
Faults: ``partition(i)`` takes the bridge side of host i's link down, ``heal(i)`` brings it back;
``delay(i, ms)`` adds a ``tc netem`` qdisc on the host's ``eth0``. ``cleanup()`` removes every
namespace, veth and the bridge whose name starts with ``awc-`` (stale ones from a crashed run too);
removing a namespace removes its qdiscs, and its processes are killed first. These names and the subnet
are machine-wide, so ``exclusive()`` lets one cluster run at a time hold them: a second run waits
instead of its ``cleanup()`` killing the first one's hosts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support.processes import wait_until

PREFIX = "awc-"
BRIDGE = "awc-br0"
SUBNET = "10.213.47"
SERVICE_ADDRESS = f"{SUBNET}.1"
HOSTS = 3
LOCK_PATH = Path(tempfile.gettempdir()) / "awc-cluster.lock"


class Busy(Exception):
    """Another cluster run held the namespaces for longer than we would wait."""


@contextlib.contextmanager
def exclusive(timeout: float = 600) -> Iterator[None]:
    """Hold the machine-wide cluster lock (``flock``) while the body runs; ``Busy`` after ``timeout``."""
    with open(LOCK_PATH, "a+") as handle:

        def taken() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        try:
            wait_until(taken, timeout=timeout, what="the cluster lock", interval=0.5)
        except AssertionError:
            raise Busy(f"another cluster run has held {LOCK_PATH} for over {timeout:.0f} s") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def host_name(index: int) -> str:
    return f"{PREFIX}host{index}"


def host_address(index: int) -> str:
    return f"{SUBNET}.1{index}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def unavailable_reason() -> str | None:
    """Why the namespace suite cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "the cluster suite needs root (network namespaces, veth pairs, tc netem)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "the cluster suite needs iproute2 (ip, tc)"
    probe = f"{PREFIX}probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns is unavailable here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _namespaces() -> list[str]:
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in listed if line.strip().startswith(PREFIX)]


def cleanup() -> None:
    """Remove everything this module makes, including leftovers of an earlier crashed run."""
    for namespace in _namespaces():
        pids = _ip("netns", "pids", namespace, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _ip("netns", "del", namespace, check=False)
    links = _ip("-o", "link", "show", check=False).stdout.splitlines()
    for line in links:
        name = line.split(":", 2)[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(PREFIX):
            _ip("link", "del", name, check=False)


def create() -> None:
    """The bridge and three hosts, each reaching ``SERVICE_ADDRESS`` over its own veth link."""
    cleanup()
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{SERVICE_ADDRESS}/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    for index in range(1, HOSTS + 1):
        namespace, outer, inner = host_name(index), f"{PREFIX}v{index}", f"{PREFIX}n{index}"
        _ip("netns", "add", namespace)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", outer, "master", BRIDGE)
        _ip("link", "set", outer, "up")
        _ip("link", "set", inner, "netns", namespace)
        _ip("-n", namespace, "link", "set", inner, "name", "eth0")
        _ip("-n", namespace, "addr", "add", f"{host_address(index)}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")


def partition(index: int) -> None:
    """Drop host ``index``'s link: its packets go nowhere until ``heal``."""
    _ip("link", "set", f"{PREFIX}v{index}", "down")


def heal(index: int) -> None:
    _ip("link", "set", f"{PREFIX}v{index}", "up")


def delay(index: int, milliseconds: int) -> None:
    """``tc netem delay``: every packet host ``index`` sends waits this long."""
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            host_name(index),
            "tc",
            "qdisc",
            "add",
            "dev",
            "eth0",
            "root",
            "netem",
            "delay",
            f"{milliseconds}ms",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


def undelay(index: int) -> None:
    subprocess.run(
        ["ip", "netns", "exec", host_name(index), "tc", "qdisc", "del", "dev", "eth0", "root"],
        check=False,
        capture_output=True,
        timeout=30,
    )


def leftovers() -> list[str]:
    """Names of anything of ours still present (the suite asserts this is empty at the end)."""
    links = _ip("-o", "link", "show", check=False).stdout.splitlines()
    found = [line.split(":", 2)[1].strip().split("@")[0] for line in links if ":" in line]
    return [*_namespaces(), *[name for name in found if name.startswith(PREFIX)]]
