"""Private Redis and PostgreSQL servers on free loopback ports, owned by one test run.

The crash suite kills and restarts its servers; the machine's shared ones (5432, 6379) are never
touched. Everything lives in a temporary directory that ``close()`` removes, after stopping the
server. PostgreSQL refuses to run as root, so when we are root ``initdb``/``pg_ctl`` run as the
``postgres`` user through ``runuser``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

import psycopg
import redis

from tests.support.processes import free_port, wait_until


class PrivateRedis:
    """A ``redis-server`` without persistence: a kill and restart comes back empty."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="crash-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--logfile",
                os.path.join(self.dir, "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, ignore=(Exception,), timeout=20, what=f"private redis on port {self.port}")

    def ping(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: in-memory data (queues, scheduled jobs, counters) is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def restart_empty(self) -> None:
        self.kill()
        self.start()
        self.restarts += 1

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    return shutil.which(name) or name


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (trust auth, fsync off) on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = tempfile.mkdtemp(prefix="crash-pg-")
        self.data = os.path.join(self.root, "data")
        self.sockets = os.path.join(self.root, "run")
        self.log = os.path.join(self.root, "postgres.log")
        self.restarts = 0
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", "postgres", "--"]
            os.chmod(self.root, 0o755)
        os.makedirs(self.sockets)
        if self._as_user:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sockets, "postgres")
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [*self._as_user, *args], check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def init(self) -> None:
        self._run(_pg_bin("initdb"), "-D", self.data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.sockets} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(_pg_bin("pg_ctl"), "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start")
        wait_until(self.ready, ignore=(Exception,), timeout=30, what=f"private postgres on port {self.port}")

    def ready(self) -> bool:
        with psycopg.connect(self.admin_url, connect_timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends every session (clients see their connections drop); ``immediate`` is a crash."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(_pg_bin("pg_ctl"), "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, down_seconds: float = 0.0, *, mode: str = "fast") -> None:
        self.stop(mode)
        if down_seconds > 0:
            time.sleep(down_seconds)  # the outage itself is the point: it lasts this long
        self.start()
        self.restarts += 1

    @contextlib.contextmanager
    def down(self, *, mode: str = "fast") -> Iterator[None]:
        """Stopped for the ``with`` block, started again on the way out (counted as a restart)."""
        self.stop(mode)
        try:
            yield
        finally:
            self.start()
            self.restarts += 1

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
