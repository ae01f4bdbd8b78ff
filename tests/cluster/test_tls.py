"""``rediss://`` against a real TLS Redis (redis-server 7.0.15 ``--tls-port``, a self-signed certificate)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
import redis

from alert_worker.connect import redis_client
from alert_worker.producer import send_alert
from alert_worker.settings import Settings
from tests.support.cli import run_cli
from tests.support.processes import free_port, wait_until
from tests.support.smtp import SmtpSink

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


@dataclass
class TlsRedis:
    port: int
    ca: str

    def url(self, db: int = 0) -> str:
        return f"rediss://127.0.0.1:{self.port}/{db}?ssl_ca_certs={self.ca}"


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    """A TLS-only redis-server on a free loopback port, its certificate valid for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    root = tempfile.mkdtemp(prefix="cluster-tls-")
    cert, key = os.path.join(root, "cert.pem"), os.path.join(root, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--tls-cert-file", cert, "--tls-key-file", key,
         "--tls-ca-cert-file", cert, "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", root],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    found = TlsRedis(port=port, ca=cert)
    try:
        if process.poll() is not None:
            pytest.skip("this redis-server was built without TLS")
        wait_until(
            lambda: bool(redis.Redis.from_url(found.url()).ping()), ignore=(Exception,), timeout=20, what="TLS redis"
        )
        yield found
    finally:
        process.kill()
        process.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def test_a_rediss_url_gives_a_verified_tls_connection(tls_redis: TlsRedis) -> None:
    """The package's client speaks TLS, verifying the server against the CA named in the URL."""
    client = redis_client(Settings.from_env({"REDIS_URL": tls_redis.url(1)}))
    client.set("probe", "tls")
    assert client.get("probe") == b"tls"
    client.close()


def test_plain_redis_to_a_tls_port_fails_cleanly(tls_redis: TlsRedis) -> None:
    """``redis://`` to the TLS port fails with a Redis error, not a hang (the socket timeouts bound it)."""
    client = redis_client(Settings.from_env({"REDIS_URL": f"redis://127.0.0.1:{tls_redis.port}/0",
                                             "ALERT_SEND_TIMEOUT_SECONDS": "1"}))  # fmt: skip
    with pytest.raises(redis.RedisError):
        client.ping()


def test_producer_worker_and_cli_deliver_over_tls(
    tls_redis: TlsRedis, worker_env: dict[str, str], smtp_sink: SmtpSink, database_url: str
) -> None:
    """send_alert, ``alert-worker run --burst`` (worker, sweep, per-job clients) and ``check`` over rediss://."""
    env = {**worker_env, "REDIS_URL": tls_redis.url(2)}
    redis.Redis.from_url(tls_redis.url(2)).flushdb()
    send_alert("email", "ops@example.com", "Disk full", "b", delivery_id="tls-1", settings=Settings.from_env(env))
    done = run_cli(["run", "--burst"], env, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with psycopg.connect(database_url, prepare_threshold=None) as conn:
        row = conn.execute("SELECT status FROM alert_deliveries WHERE id = 'tls-1'").fetchone()
    assert row == ("delivered",)
    assert len(smtp_sink.accepted) == 1
    assert run_cli(["check"], env, timeout=60).returncode == 0
