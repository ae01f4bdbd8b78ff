"""What the cluster suite's hosts talk to, on the bridge address only (``netns.SERVICE_ADDRESS``).

A private Redis (protected mode off: clients come from the namespaces' addresses), a PgBouncer in
transaction mode in front of the test Postgres, an SMTP sink that records which host sent each message
and when, and, for a slow host on a kernel without netem, delay relays in front of each of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from aiosmtpd.controller import Controller

from tests.cluster import netns
from tests.cluster.pgbouncer import PgBouncer
from tests.cluster.relay import DelayRelay
from tests.support.processes import free_port, wait_until

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
JOB_TIMEOUT_SECONDS = 5  # also the alive key's TTL (liveness.alive_ttl_for keeps it within 3..30 s)
STUCK_AFTER_SECONDS = 900  # the default: a stuck reclaim cannot explain a recovery within the test


@dataclass
class Send:
    delivery_id: str
    host: str
    at: float


@dataclass
class RecordingSink:
    """Accepts every message after ``data_delay`` seconds; records sender address and time."""

    data_delay: float = 0.1  # a provider answering in 100 ms, as in the bench's @100 cases
    sends: list[Send] = field(default_factory=list)
    on_send: Callable[[Send], None] | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.data_delay)
        content = envelope.original_content or b""
        delivery_id = ""
        for line in content.split(b"\r\n"):
            if line.lower().startswith(b"x-alert-delivery-id:") or line.lower().startswith(b"message-id:"):
                delivery_id = line.split(b":", 1)[1].strip().decode()
                break
        send = Send(delivery_id=delivery_id, host=str(session.peer[0]), at=time.monotonic())
        self.sends.append(send)
        if self.on_send is not None:
            self.on_send(send)  # e.g. cut the sender's link now: accepted here, the reply never arrives
        return "250 2.0.0 OK queued"


class Services:
    """Redis, PgBouncer and the SMTP sink on the bridge address; relays for a slow host when needed."""

    def __init__(self) -> None:
        address = netns.SERVICE_ADDRESS
        self.redis_port = free_port()
        self.redis_dir = tempfile.mkdtemp(prefix="cluster-redis-")
        self.redis: subprocess.Popen[bytes] | None = None
        self.redis_url = f"redis://{address}:{self.redis_port}/0"
        self.bouncer = PgBouncer(upstream=ADMIN_DSN, listen=address, pool_size=20)
        self.sink = RecordingSink()
        self.smtp_port = free_port()
        self.controller = Controller(self.sink, hostname=address, port=self.smtp_port)
        self.relays: list[DelayRelay] = []

    def start(self) -> None:
        self.redis = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--bind",
                netns.SERVICE_ADDRESS,
                "--port",
                str(self.redis_port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.redis_dir,
                "--protected-mode",  # clients come from the namespaces' addresses, not loopback
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: bool(redis.Redis.from_url(self.redis_url).ping()),
            ignore=(Exception,),
            timeout=20,
            what="fleet redis",
        )
        self.bouncer.start()
        self.controller.start()

    def slow_ports(self, delay_seconds: float) -> dict[str, int]:
        """Relays that delay what a host sends to Redis, PgBouncer and SMTP (netem's stand-in)."""
        ports = {}
        for name, port in (("redis", self.redis_port), ("postgres", self.bouncer.port), ("smtp", self.smtp_port)):
            relay = DelayRelay(
                listen=netns.SERVICE_ADDRESS,
                port=free_port(),
                target=(netns.SERVICE_ADDRESS, port),
                delay_seconds=delay_seconds,
            )
            relay.start()
            self.relays.append(relay)
            ports[name] = relay.port
        return ports

    def close(self) -> None:
        for relay in self.relays:
            relay.close()
        with contextlib.suppress(AssertionError, RuntimeError):  # never started: nothing to stop
            self.controller.stop()
        self.bouncer.close()
        if self.redis is not None:
            self.redis.kill()
            self.redis.wait(timeout=10)
        shutil.rmtree(self.redis_dir, ignore_errors=True)


def worker_env(
    services: Services, database: str, ports: dict[str, int] | None = None, *, threads: int = 4
) -> dict[str, str]:
    """A host's settings: the default threaded worker, a 5 s job timeout (so a 5 s alive TTL) and the
    production stuck timeout, so only the dead-worker reclaim can recover a cut host's claims quickly."""
    ports = ports or {"redis": services.redis_port, "postgres": services.bouncer.port, "smtp": services.smtp_port}
    address = netns.SERVICE_ADDRESS
    return {
        "DATABASE_URL": f"postgresql://postgres@{address}:{ports['postgres']}/{database}",
        "ALERT_DB_POOLER": "pgbouncer",
        "REDIS_URL": f"redis://{address}:{ports['redis']}/0",
        "SMTP_HOST": address,
        "SMTP_PORT": str(ports["smtp"]),
        "SMTP_SECURITY": "none",
        "ALERTS_FROM_EMAIL": "alerts@example.org",
        "ALERT_RECIPIENT_HASH_SECRET": "cluster-secret",
        "ALERT_SEND_TIMEOUT_SECONDS": "3",
        "ALERT_WORKER_THREADS": str(threads),
        "ALERT_JOB_TIMEOUT_SECONDS": str(JOB_TIMEOUT_SECONDS),
        "ALERT_STUCK_AFTER_SECONDS": str(STUCK_AFTER_SECONDS),
        "ALERT_SWEEP_INTERVAL_SECONDS": "1",
        "ALERT_SWEEP_GRACE_SECONDS": "3",
        "ALERT_RATE_EMAIL_PER_MIN": "0",
        "ALERT_RATE_EMAIL_PER_RECIPIENT_HOUR": "0",
        "ALERT_RATE_GLOBAL_PER_MIN": "0",
        "ALERT_AUTO_MIGRATE": "0",
    }
