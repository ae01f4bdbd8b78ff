"""The cluster suite's scenarios: three worker hosts (network namespaces), one fault each, one judge.

Services listen on the bridge address only (netns.SERVICE_ADDRESS): a private Redis, a PgBouncer in
transaction mode in front of the test Postgres, and an SMTP sink that records which host sent what and
when. Each scenario makes its own database and flushes Redis. The hosts run the default thread-pooled
worker (``alert-worker run``, ``THREADS`` threads each). The judge is the crash suite's: nothing lost, and
a duplicate only for a delivery the provider accepted from the faulted host before the fault while its row
was not yet written (``forced``). The partition's own checks live in ``partition.py``.
"""

from __future__ import annotations

import collections
import re
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
import redis
from rq.suspension import resume, suspend

from alert_worker.producer import send_alert
from alert_worker.resources import open_pool
from alert_worker.settings import Settings
from alert_worker.store import DeliveryStore
from tests.cluster import netns, partition
from tests.cluster.fleet import SupervisedWorker
from tests.cluster.services import ADMIN_DSN, Send, Services, worker_env
from tests.support.processes import wait_until

THREADS = 4  # deliveries in flight per host: a few, as a small host runs them


@dataclass
class Outcome:
    fault: str
    deliveries: int = 0
    lost: int = 0
    duplicates: int = 0
    forced: int = 0
    forced_ids: set[str] = field(default_factory=set)
    restarts: int = 0
    seconds: float = 0.0
    fault_seconds: float = 0.0
    held: int = 0  # partition: rows the cut host had claimed
    reclaimed: int = 0  # of those, delivered by another host with the lost attempt counted
    alive_lapse_seconds: float = 0.0  # partition: cut -> the cut host's alive keys gone
    recovery_seconds: float = 0.0  # partition: cut -> its last held row delivered elsewhere
    per_host: dict[str, int] = field(default_factory=dict)
    p50_job: dict[str, float | None] = field(default_factory=dict)  # median RQ job duration per host
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicates <= self.forced and not self.notes

    def line(self) -> str:
        hosts = " ".join(f"{h}={n}" for h, n in sorted(self.per_host.items()))
        hosts += " " + " ".join(f"{h}_job_p50_s={v:.3f}" for h, v in sorted(self.p50_job.items()) if v is not None)
        if self.fault == "partition":
            hosts += (
                f" held={self.held} reclaimed={self.reclaimed} alive_lapse_s={self.alive_lapse_seconds:.1f}"
                f" recovery_s={self.recovery_seconds:.1f}"
            )
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
    """Enqueue a backlog of ``deliveries`` while the hosts are suspended, release them at once, inject ``fault``.

    ``partition``: host 1 loses its link mid-burst, healed after the others recovered its claims.
    ``slow``: host 2's traffic is delayed 50 ms (netem, or the relay where the kernel lacks netem).
    """
    outcome = Outcome(fault=fault, deliveries=deliveries)
    services.sink.sends.clear()
    redis.Redis.from_url(services.redis_url).flushdb()
    with scenario_database() as database:
        base = worker_env(services, database, threads=THREADS)
        envs = {i: base for i in range(1, netns.HOSTS + 1)}
        if fault == "slow" and not _netem_delay(2, 50):
            envs[2] = worker_env(services, database, services.slow_ports(0.05), threads=THREADS)
        workers = {i: SupervisedWorker(["run"], envs[i], netns=netns.host_name(i), name=f"h{i}") for i in envs}
        settings = Settings.from_env(base)
        control = redis.Redis.from_url(services.redis_url)
        cutter = partition.Cutter(services, control) if fault == "partition" else None
        try:
            suspend(control)  # `rq suspend`: the hosts start, register and wait; the backlog is all there
            for delivery_id in (f"{fault}-{n}" for n in range(deliveries)):
                send_alert(
                    "email",
                    f"ops+{delivery_id}@example.com",
                    "Disk full",
                    "b",
                    delivery_id=delivery_id,
                    settings=settings,
                )
            for worker in workers.values():
                worker.start()
            wait_until(
                lambda: control.scard("rq:workers") >= netns.HOSTS,
                ignore=(Exception,),
                timeout=60,
                what="three workers up",
            )
            resume(control)  # every host polls this once a second: they start draining within a second
            cut = cutter.wait(database) if cutter is not None else None
            done: Callable[[], bool] = lambda: (  # noqa: E731
                not any(w.poll() for w in workers.values())
                and list(_rows(database).values()).count("delivered") == deliveries
            )
            wait_until(done, ignore=(Exception,), timeout=timeout, what=f"{fault}: every delivery delivered")
            if cut is not None:
                outcome.fault_seconds = time.monotonic() - cut.at
                cut.healed_at = time.monotonic()
                overwritten = partition.after_heal(workers[partition.HOST], control, database)
                outcome.notes += [overwritten] if overwritten else []
                _judge_partition(outcome, cut, services.sink.sends, database)
        finally:
            services.sink.on_send = None
            if fault == "partition":
                netns.heal(partition.HOST)
            netns.undelay(2)
            for index, worker in workers.items():
                outcome.restarts += worker.restarts
                outcome.p50_job[f"host{index}"] = _median_job_seconds(worker)
                if keep_logs:
                    shutil.copy(worker.log, f"{keep_logs}-{fault}-h{index}.log")
                worker.close()
        _judge(outcome, services.sink.sends, _rows(database))
    return outcome


_JOB_DONE = re.compile(r"Successfully completed job \S+ in (\d+):(\d+):([\d.]+)s")


def _median_job_seconds(worker: SupervisedWorker) -> float | None:
    """Median duration of the host's RQ jobs (dequeue to finished), from RQ's own log line."""
    values = [int(h) * 3600 + int(m) * 60 + float(sec) for h, m, sec in _JOB_DONE.findall(worker.tail(10_000_000))]
    return statistics.median(values) if values else None


def _netem_delay(index: int, milliseconds: int) -> bool:
    try:
        netns.delay(index, milliseconds)
        return True
    except subprocess.CalledProcessError:
        return False


def _judge_partition(outcome: Outcome, cut: partition.Cut, sends: list[Send], database: str) -> None:
    reclaim = partition.judge_reclaim(cut, sends, database)
    outcome.held, outcome.reclaimed = len(cut.held), reclaim.reclaimed
    outcome.alive_lapse_seconds, outcome.recovery_seconds = cut.alive_lapse_seconds, reclaim.recovery_seconds
    outcome.forced_ids = reclaim.forced
    outcome.forced = len(reclaim.forced)
    if reclaim.reclaimed < len(cut.held):
        outcome.notes.append(f"only {reclaim.reclaimed} of {len(cut.held)} held claims reclaimed by another host")


def _judge(outcome: Outcome, sends: list[Send], rows: dict[str, str]) -> None:
    per_id = collections.Counter(_delivery_of(s.delivery_id) for s in sends)
    outcome.lost = sum(1 for i in rows if per_id.get(i, 0) == 0 or rows[i] != "delivered")
    outcome.duplicates = sum(n - 1 for n in per_id.values() if n > 1)
    unforced = sorted(i for i, n in per_id.items() if n > 1 and i not in outcome.forced_ids)
    if unforced:
        outcome.notes.append(f"duplicates the provider had not accepted before the fault: {unforced}")
    outcome.per_host = dict(collections.Counter(_host_of(s.host) for s in sends))
    if sends:  # the fleet's drain: first to last acceptance at the provider
        outcome.seconds = max(s.at for s in sends) - min(s.at for s in sends)


def _host_of(address: str) -> str:
    """The sending host: its own address, or the bridge address when it came through a delay relay."""
    if address == netns.SERVICE_ADDRESS:
        return "host2"  # only the slow host goes through relays
    return f"host{address.rsplit('.', 1)[1][-1]}"


_delivery_of = partition.delivery_of
