"""A Redis Sentinel set owned by one test run: a primary, a replica and three sentinels (quorum 2).

Redis 7.0.15's ``redis-server --sentinel``. Ports are free loopback ports (or a given address, for the
network-namespace hosts); everything lives in a temporary directory that ``close()`` removes after
stopping every process. Timings make a failover take a few seconds, decided by its first attempt:

- The elected sentinel promotes only a replica whose INFO it read within the last 5 s (the primary being
  down), and reads a replica's INFO every 10 s by default: with a stale reading the attempt ends
  ``-failover-abort-no-good-slave``. ``SENTINEL DEBUG info-period 1000``: read every second.
- Two sentinels call the primary down after 1 s and may stand for leader; the third only after 10 s, so it
  never stands in the same election and its vote always breaks the tie (three candidates each voting for
  itself elect nobody).
- A failed attempt is retried only ``2 × failover-timeout`` later: ``failover-timeout`` 6 s, so 12 s, not 40 s.
- ``ready_for_failover()`` waits until every sentinel agrees on the primary and sees the replica linked to
  it, before a failover is forced or the primary killed.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from tests.support.processes import free_port, wait_until

MASTER = "alerts"
SENTINEL_CONF = """\
port {port}
bind {bind}
dir {dir}
sentinel monitor {master} {primary_host} {primary_port} 2
sentinel down-after-milliseconds {master} {down_after}
sentinel failover-timeout {master} 6000
sentinel parallel-syncs {master} 1
"""
DOWN_AFTER_MS = (1000, 1000, 10000)  # per sentinel: the last one votes, never stands (see above)
INFO_PERIOD_MS = 1000  # how often a sentinel reads each instance's INFO (Sentinel's default: 10 s)


class SentinelSet:
    """Primary on ``primary_port``, replica of it, three sentinels; ``failover()`` swaps the roles."""

    def __init__(self, *, bind: str = "127.0.0.1") -> None:
        self.bind = bind
        self.dir = tempfile.mkdtemp(prefix="cluster-sentinel-")
        self.data_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.split_brain_seconds = 0.0

    @property
    def sentinels(self) -> str:
        """``REDIS_SENTINELS`` for this set."""
        return ",".join(f"{self.bind}:{port}" for port in self.sentinel_ports)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host=self.bind, port=port, socket_timeout=2, socket_connect_timeout=2)

    def _spawn(self, port: int, args: list[str]) -> None:
        log = os.path.join(self.dir, f"{port}.log")
        binary = shutil.which("redis-server") or "redis-server"
        self.processes[port] = subprocess.Popen(
            [binary, *args, "--logfile", log], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _start_data(self, port: int, replica_of: int | None) -> None:
        args = ["--bind", self.bind, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", self.dir]
        args += ["--dbfilename", f"{port}.rdb"]
        if replica_of is not None:
            args += ["--replicaof", self.bind, str(replica_of)]
        self._spawn(port, args)
        wait_until(lambda: bool(self.client(port).ping()), ignore=(Exception,), timeout=20, what=f"redis on {port}")

    def start(self) -> None:
        primary, replica = self.data_ports
        self._start_data(primary, None)
        self._start_data(replica, primary)
        wait_until(
            lambda: self.client(replica).info("replication")["master_link_status"] == "up",
            ignore=(Exception,),
            timeout=20,
            what="replica in sync",
        )
        for port, down_after in zip(self.sentinel_ports, DOWN_AFTER_MS, strict=True):
            conf = os.path.join(self.dir, f"sentinel-{port}.conf")
            with open(conf, "w") as handle:
                handle.write(
                    SENTINEL_CONF.format(
                        port=port,
                        bind=self.bind,
                        dir=self.dir,
                        master=MASTER,
                        down_after=down_after,
                        primary_host=self.bind,
                        primary_port=primary,
                    )
                )
            self._spawn(port, [conf, "--sentinel"])
        for port in self.sentinel_ports:
            wait_until(
                functools.partial(self._debug, port, "info-period", INFO_PERIOD_MS),
                ignore=(Exception,),
                timeout=20,
                what=f"sentinel on {port}",
            )
        wait_until(
            self._sentinels_agree,
            ignore=(Exception,),
            timeout=30,
            what="three sentinels that know the replica and each other",
        )

    def _debug(self, port: int, name: str, value: int) -> bool:
        """``SENTINEL DEBUG name value`` (Redis 7.0+): one of Sentinel's internal periods."""
        done = self.client(port).execute_command("SENTINEL", "DEBUG", name, value)  # type: ignore[no-untyped-call]
        return done in (b"OK", "OK", True)

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            state: Any = self.client(port).sentinel_master(MASTER)
            if state["num-other-sentinels"] < 2 or state["num-slaves"] < 1:
                return False
        return True

    def primary_port(self) -> int:
        address: Any = self.client(self.sentinel_ports[0]).sentinel_get_master_addr_by_name(MASTER)
        return int(address[1])

    def replica_port(self) -> int:
        primary = self.primary_port()
        return next(port for port in self.data_ports if port != primary)

    def ready_for_failover(self, *, timeout: float = 30) -> None:
        """Wait until every sentinel names the same primary, knows the other two, and sees the replica (from a
        recent INFO) as a healthy replica of that primary with its link up.
        """
        self.wait_for(self._ready, timeout=timeout, what="sentinels ready to fail over")

    def wait_for(self, condition: Callable[[], bool], *, timeout: float, what: str) -> None:
        """``wait_until`` (errors mean "not yet"); a timeout shows each sentinel's view and its last events."""
        try:
            wait_until(condition, ignore=(Exception,), timeout=timeout, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.describe()}") from None

    def _ready(self) -> bool:
        primary, replica = self.primary_port(), self.replica_port()
        for port in self.sentinel_ports:
            client = self.client(port)
            address: Any = client.sentinel_get_master_addr_by_name(MASTER)
            master: Any = client.sentinel_master(MASTER)
            if int(address[1]) != primary or master["num-other-sentinels"] < 2 or "failover" in str(master["flags"]):
                return False
            replicas: Any = client.sentinel_slaves(MASTER)
            if not any(
                state["port"] == replica
                and state["is_slave"]
                and not (state["is_sdown"] or state["is_disconnected"])
                and state["master-link-status"] == "ok"
                and state["info-refresh"] < 3 * INFO_PERIOD_MS
                and state["master-port"] == primary
                for state in replicas
            ):
                return False
        return True

    def describe(self) -> str:
        """Each sentinel's view of the set and the last lines of its log (for a timeout message)."""
        views = []
        for port in self.sentinel_ports:
            try:
                client = self.client(port)
                master: Any = client.sentinel_master(MASTER)
                replicas: Any = client.sentinel_slaves(MASTER)
                seen = [
                    f"{s['port']} {s['flags']} link {s['master-link-status']} to {s['master-port']}" for s in replicas
                ]
                views.append(f"sentinel {port}: primary {master['port']} {master['flags']}; replicas {seen}")
            except Exception as exc:
                views.append(f"sentinel {port}: {type(exc).__name__}")
            log = Path(self.dir) / f"{port}.log"
            views += [f"  {line}" for line in (log.read_text().splitlines()[-8:] if log.exists() else [])]
        return "\n".join(views)

    def failover(self, *, timeout: float = 30) -> int:
        """``SENTINEL FAILOVER``: the replica is promoted; returns the new primary's port."""
        self.ready_for_failover()
        old = self.primary_port()
        self.client(self.sentinel_ports[0]).execute_command("SENTINEL", "FAILOVER", MASTER)  # type: ignore[no-untyped-call]
        wait_until(lambda: self.primary_port() != old, ignore=(Exception,), timeout=timeout, what="sentinel failover")
        new = self.primary_port()
        wait_until(
            lambda: self.client(new).info("replication")["role"] == "master",
            ignore=(Exception,),
            timeout=timeout,
            what="promotion",
        )
        # Until Sentinel demotes the old primary (it waits ~8 s after seeing it still claim the role), a
        # client still connected to it writes there, and those writes are lost at the demotion. The
        # failover is complete only once the old primary is a replica: that window is measured here.
        promoted = time.monotonic()
        wait_until(
            lambda: self.client(old).info("replication")["role"] == "slave",
            ignore=(Exception,),
            timeout=60,
            what="demotion",
        )
        self.split_brain_seconds = time.monotonic() - promoted
        return new

    def wait_in_sync(self, *, timeout: float = 30) -> None:
        """Wait until the replica's link to the current primary is up (after a failover it resyncs).

        A replica left following a node that is no longer the primary (a lossy test's re-attach racing
        Sentinel's own reconfiguration) is pointed at the current one; a timeout shows its state and log.
        """
        primary, port = self.primary_port(), self.replica_port()
        replica = self.client(port)

        def linked() -> bool:
            state: Any = replica.info("replication")
            if state.get("master_link_status") == "up" and int(state.get("master_port", 0)) == primary:
                return True
            if state.get("role") != "slave" or int(state.get("master_port", 0)) != primary:
                replica.replicaof(self.bind, primary)
            return False

        try:
            wait_until(linked, ignore=(Exception,), timeout=timeout, what="replica link up")
        except AssertionError as exc:
            log = Path(self.dir) / f"{port}.log"
            tail = log.read_text()[-1500:] if log.exists() else ""
            raise AssertionError(f"{exc}; primary {primary}, replica {port}: {tail}") from None

    def restart_as_replica(self, port: int) -> None:
        """Bring a killed data node back empty, as a replica of the current primary."""
        self._start_data(port, self.primary_port())

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            process.wait(timeout=10)
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def running_sentinel_set(*, bind: str = "127.0.0.1") -> Iterator[SentinelSet]:
    found = SentinelSet(bind=bind)
    try:
        found.start()
        yield found
    finally:
        found.close()
