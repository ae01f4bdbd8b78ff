"""The cluster suite's scenarios: three worker hosts (network namespaces), one fault each, one judge.

Services listen on the bridge address only (netns.SERVICE_ADDRESS): a private Redis, a PgBouncer in
transaction mode in front of the test Postgres, and an SMTP sink that records which host sent what and
when. Each scenario makes its own database and flushes Redis. The judge is the crash suite's: nothing
lost, and a duplicate only for a delivery the provider accepted from the faulted host before the fault
while its row was not yet written (``forced``).
"""

from __future__ import annotations

import collections
import json
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
import redis

from alert_worker.producer import send_alert
from alert_worker.resources import open_pool
from alert_worker.settings import Settings
from alert_worker.store import DeliveryStore
from tests.cluster import netns
from tests.cluster.fleet import SupervisedWorker
from tests.cluster.services import ADMIN_DSN, Send, Services, worker_env
from tests.support.processes import wait_until


@dataclass
class Outcome:
    fault: str
    deliveries: int = 0
    lost: int = 0
    duplicates: int = 0
    forced: int = 0
    restarts: int = 0
    seconds: float = 0.0
    fault_seconds: float = 0.0
    per_host: dict[str, int] = field(default_factory=dict)
    p50_latency: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicates <= self.forced and not self.notes

    def line(self) -> str:
        hosts = " ".join(f"{h}={n}" for h, n in sorted(self.per_host.items()))
        hosts += " " + " ".join(f"{h}_p50_s={v:.2f}" for h, v in sorted(self.p50_latency.items()) if v is not None)
        return (
            f"cluster-scenario {self.fault}: deliveries={self.deliveries} lost={self.lost} "
            f"duplicates={self.duplicates} forced={self.forced} restarts={self.restarts} "
            f"seconds={self.seconds:.1f} rate={self.deliveries / max(self.seconds, 1e-9):.1f}/s "
            f"fault_seconds={self.fault_seconds:.1f} {hosts} {' '.join(self.notes)}".rstrip()
        )


@contextmanager
def scenario_database() -> Iterator[str]:
    name = f"alert_cluster_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        pool = open_pool(Settings(database_url=ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}", redis_url=""))
        try:
            DeliveryStore(pool=pool).migrate()
        finally:
            pool.close()
        yield name
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _rows(database: str) -> dict[str, str]:
    with psycopg.connect(ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}") as conn:
        return {str(i): str(s) for i, s in conn.execute("SELECT id, status FROM alert_deliveries").fetchall()}


def run_scenario(
    fault: str, *, deliveries: int, services: Services, timeout: float = 120, keep_logs: str = ""
) -> Outcome:
    """``partition``: host 1 loses its link mid-burst, healed after the others recovered its claims.
    ``slow``: host 2's traffic is delayed 50 ms (netem, or the relay where the kernel lacks netem)."""
    outcome = Outcome(fault=fault, deliveries=deliveries)
    services.sink.sends.clear()
    redis.Redis.from_url(services.redis_url).flushdb()
    with scenario_database() as database:
        base = worker_env(services, database)
        envs = {i: base for i in range(1, netns.HOSTS + 1)}
        if fault == "slow" and not _netem_delay(2, 50):
            envs[2] = worker_env(services, database, services.slow_ports(0.05))
        workers = {i: SupervisedWorker(["run"], envs[i], netns=netns.host_name(i), name=f"h{i}") for i in envs}
        try:
            for worker in workers.values():
                worker.start()
            settings = Settings.from_env(base)
            control = redis.Redis.from_url(services.redis_url)
            wait_until(
                lambda: control.scard("rq:workers") >= netns.HOSTS,
                ignore=(Exception,),
                timeout=60,
                what="three workers up",
            )
            ids = [f"{fault}-{n}" for n in range(deliveries)]
            started = time.monotonic()
            for delivery_id in ids:
                send_alert(
                    "email",
                    f"ops+{delivery_id}@example.com",
                    "Disk full",
                    "b",
                    delivery_id=delivery_id,
                    settings=settings,
                )
            fault_at = _inject(fault, outcome, services, database)
            done: Callable[[], bool] = lambda: (  # noqa: E731
                not any(w.poll() for w in workers.values())
                and list(_rows(database).values()).count("delivered") == deliveries
            )
            wait_until(done, ignore=(Exception,), timeout=timeout, what=f"{fault}: every delivery delivered")
            outcome.seconds = time.monotonic() - started
            if fault == "partition":
                outcome.fault_seconds = time.monotonic() - fault_at
                netns.heal(1)
                _after_heal(workers[1], database, outcome)
        finally:
            if fault == "partition":
                netns.heal(1)
            netns.undelay(2)
            for index, worker in workers.items():
                outcome.restarts += worker.restarts
                outcome.p50_latency[f"host{index}"] = _median_latency(worker)
                if keep_logs:
                    shutil.copy(worker.log, f"{keep_logs}-{fault}-h{index}.log")
                worker.close()
        _judge(outcome, services.sink.sends, _rows(database))
    return outcome


def _median_latency(worker: SupervisedWorker) -> float | None:
    """Median ``latency_seconds`` of the host's ``delivery_delivered`` events (enqueue to accepted)."""
    values = []
    for line in worker.tail(10_000_000).splitlines():
        if '"delivery_delivered"' in line:
            try:
                values.append(float(json.loads(line)["latency_seconds"]))
            except (ValueError, KeyError):
                continue
    return statistics.median(values) if values else None


def _netem_delay(index: int, milliseconds: int) -> bool:
    try:
        netns.delay(index, milliseconds)
        return True
    except subprocess.CalledProcessError:
        return False


def _inject(fault: str, outcome: Outcome, services: Services, database: str) -> float:
    if fault != "partition":
        return time.monotonic()
    host = netns.host_address(1)
    cut = threading.Event()

    def cut_after_third(send: Send) -> None:
        if send.host == host and not cut.is_set() and sum(s.host == host for s in services.sink.sends) >= 3:
            netns.partition(1)  # mid-DATA: the provider accepted this one, host 1 never hears so
            cut.set()

    services.sink.on_send = cut_after_third
    try:
        wait_until(cut.is_set, ignore=(Exception,), timeout=60, what="host 1 delivering its third alert")
    finally:
        services.sink.on_send = None
    fault_at = time.monotonic()
    in_flight = {i for i, s in _rows(database).items() if s == "in_progress"}
    accepted_from_host = {_delivery_of(s.delivery_id) for s in services.sink.sends if s.host == host}
    outcome.forced = len(in_flight & accepted_from_host)
    return fault_at


def _after_heal(worker: SupervisedWorker, database: str, outcome: Outcome) -> None:
    """After the heal the partitioned worker finishes or fails its held jobs: no row may leave 'delivered'."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        worker.poll()
        rows = _rows(database)
        if any(status != "delivered" for status in rows.values()):
            outcome.notes.append("a healed worker overwrote newer state")
            return
        time.sleep(0.25)  # observing a quiet period after the heal is the point


def _judge(outcome: Outcome, sends: list[Send], rows: dict[str, str]) -> None:
    per_id = collections.Counter(_delivery_of(s.delivery_id) for s in sends)
    outcome.lost = sum(1 for i in rows if per_id.get(i, 0) == 0 or rows[i] != "delivered")
    outcome.duplicates = sum(n - 1 for n in per_id.values() if n > 1)
    outcome.per_host = dict(collections.Counter(_host_of(s.host) for s in sends))


def _host_of(address: str) -> str:
    """The sending host: its own address, or the bridge address when it came through a delay relay."""
    if address == netns.SERVICE_ADDRESS:
        return "host2"  # only the slow host goes through relays
    return f"host{address.rsplit('.', 1)[1][-1]}"


def _delivery_of(message_id: str) -> str:
    """``<partition-3.0@example.org>`` -> ``partition-3`` (Message-ID is ``<id>.<n>@domain``)."""
    return message_id.strip("<>").split("@", 1)[0].rsplit(".", 1)[0]
