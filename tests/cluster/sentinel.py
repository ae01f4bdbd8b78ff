"""A Redis Sentinel set owned by one test run: a primary, a replica and three sentinels (quorum 2).

Redis 7.0.15's ``redis-server --sentinel``. Ports are free loopback ports (or a given address, for the
network-namespace hosts); everything lives in a temporary directory that ``close()`` removes after
stopping every process. Fast timings (down-after 1 s) so a failover takes a few seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
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
sentinel down-after-milliseconds {master} 1000
sentinel failover-timeout {master} 20000
sentinel parallel-syncs {master} 1
"""


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
        for port in self.sentinel_ports:
            conf = os.path.join(self.dir, f"sentinel-{port}.conf")
            with open(conf, "w") as handle:
                handle.write(
                    SENTINEL_CONF.format(
                        port=port,
                        bind=self.bind,
                        dir=self.dir,
                        master=MASTER,
                        primary_host=self.bind,
                        primary_port=primary,
                    )
                )
            self._spawn(port, [conf, "--sentinel"])
        wait_until(
            self._sentinels_agree,
            ignore=(Exception,),
            timeout=30,
            what="three sentinels that know the replica and each other",
        )

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

    def failover(self, *, timeout: float = 30) -> int:
        """``SENTINEL FAILOVER``: the replica is promoted; returns the new primary's port."""
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
