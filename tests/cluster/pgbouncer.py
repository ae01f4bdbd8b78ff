"""A private PgBouncer in transaction mode, in front of a Postgres the tests already use.

Debian's ``pgbouncer`` (1.18): no prepared statements across transactions, which is what
``ALERT_DB_POOLER=pgbouncer`` is for. The ini routes every database name (``* =``) to the upstream, so
the throwaway-database scheme of tests/conftest.py works unchanged. PgBouncer refuses to run as root,
so as root it runs as the ``postgres`` user. Everything lives in a temporary directory removed by
``close()``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg

from tests.support.processes import free_port, wait_until

INI = """\
[databases]
* = host={upstream_host} port={upstream_port}

[pgbouncer]
listen_addr = {listen}
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {root}/users.txt
admin_users = postgres
pool_mode = transaction
max_client_conn = 1000
default_pool_size = {pool_size}
server_idle_timeout = 10
server_round_robin = 1
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {root}/pgbouncer.log
pidfile = {root}/pgbouncer.pid
"""


def available() -> bool:
    return shutil.which("pgbouncer") is not None


class PgBouncer:
    """``pgbouncer`` on ``listen:port`` (a free loopback port by default) routing to ``upstream``."""

    def __init__(self, *, upstream: str, listen: str = "127.0.0.1", port: int = 0, pool_size: int = 10) -> None:
        parts = urlsplit(upstream)
        self.upstream = upstream
        self.listen = listen
        self.port = port or free_port()
        self.root = tempfile.mkdtemp(prefix="cluster-pgbouncer-")
        self.process: subprocess.Popen[bytes] | None = None
        with open(os.path.join(self.root, "pgbouncer.ini"), "w") as ini:
            ini.write(
                INI.format(
                    upstream_host=parts.hostname or "127.0.0.1",
                    upstream_port=parts.port or 5432,
                    listen=listen,
                    port=self.port,
                    root=self.root,
                    pool_size=pool_size,
                )
            )
        with open(os.path.join(self.root, "users.txt"), "w") as users:
            users.write(f'"{parts.username or "postgres"}" ""\n')
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", "postgres", "--"]
            os.chmod(self.root, 0o755)
            for name in ("", "pgbouncer.ini", "users.txt"):
                shutil.chown(os.path.join(self.root, name), "postgres")

    def route(self, url: str) -> str:
        """``url`` (a database on the upstream) as reached through this PgBouncer."""
        parts = urlsplit(url)
        netloc = f"{parts.username}@{self.listen}:{self.port}" if parts.username else f"{self.listen}:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def start(self) -> None:
        binary = shutil.which("pgbouncer") or "pgbouncer"
        self.process = subprocess.Popen(
            [*self._as_user, binary, os.path.join(self.root, "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ready, ignore=(Exception,), timeout=20, what=f"pgbouncer on {self.listen}:{self.port}")

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited: {self.log_tail()}")
        with psycopg.connect(self.route(self.upstream), connect_timeout=2, prepare_threshold=None) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    def log_tail(self) -> str:
        try:
            with open(os.path.join(self.root, "pgbouncer.log")) as log:
                return log.read()[-2000:]
        except OSError:
            return ""

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def running_pgbouncer(*, upstream: str, listen: str = "127.0.0.1", port: int = 0) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(upstream=upstream, listen=listen, port=port)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.close()


def via_pgbouncer() -> bool:
    """TEST_DATABASE_VIA=pgbouncer: the test suite reaches its databases through PgBouncer."""
    return os.environ.get("TEST_DATABASE_VIA", "direct") == "pgbouncer"


def pool_kwargs() -> dict[str, object]:
    """psycopg kwargs for a test's own pool: no prepared statements when PgBouncer is in front."""
    return {"autocommit": True, **({"prepare_threshold": None} if via_pgbouncer() else {})}
