"""The partition fault: host 1's link drops mid-DATA, and only the dead-worker reclaim can free its claims.

The hosts run with ``ALERT_STUCK_AFTER_SECONDS`` at its production default (900 s), so a claim of the cut
host that another host delivers within the test's time was freed by the dead-worker reclaim (docs/contract.md §6.1):
the cut host's ``alert:worker:<name>:alive`` key lapses (its TTL is the job timeout, 3..30 s), the sweep
finds the claimant dead once the claim is older than ``ALERT_JOB_TIMEOUT_SECONDS``, and counts the lost
attempt. The cut host's RQ workers are told apart by the address RQ records for them (``ip_address``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
import redis

from tests.cluster import netns
from tests.cluster.fleet import SupervisedWorker
from tests.cluster.services import ADMIN_DSN, Send, Services
from tests.support.processes import wait_until

HOST = 1  # the host whose link is cut


@dataclass
class Cut:
    """What the cut host held when its link dropped, and how long its liveness took to lapse."""

    at: float  # time.monotonic() of the cut
    db_at: datetime  # the database's clock at the cut
    workers: set[str] = field(default_factory=set)  # the cut host's RQ worker names
    held: set[str] = field(default_factory=set)  # rows in progress under one of those names after the cut
    alive_lapse_seconds: float = 0.0
    healed_at: float = 0.0


def dsn(database: str) -> str:
    return ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}"


def host_workers(control: redis.Redis, index: int) -> set[str]:
    """Names of the RQ workers registered from host ``index``'s address."""
    prefix = f"{netns.host_address(index)}:"
    found = set()
    for key in map(_text, control.smembers("rq:workers")):
        address = control.hget(key, "ip_address")
        if address is not None and _text(address).startswith(prefix):
            found.add(key.removeprefix("rq:worker:"))
    return found


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Cutter:
    """Armed before the hosts start: cuts host 1's link inside the sink's DATA handler of its third message.

    That message (and any other of host 1's whose DATA had fully arrived) was accepted by the provider;
    host 1 never hears so. Host 1's RQ worker names are read after the cut (its registration outlives it).
    """

    def __init__(self, services: Services, control: redis.Redis) -> None:
        self._services = services
        self._control = control
        self._host = netns.host_address(HOST)
        self._cut = threading.Event()
        services.sink.on_send = self._on_send

    def _on_send(self, send: Send) -> None:
        sends = self._services.sink.sends
        if send.host == self._host and not self._cut.is_set() and sum(s.host == self._host for s in sends) >= 3:
            netns.partition(HOST)
            self._cut.set()

    def wait(self, database: str) -> Cut:
        """The cut, once host 1's alive keys have lapsed; every row it held meanwhile is recorded.

        A claim already on its way through PgBouncer lands after the cut, and a write already on its way
        may still end a row host 1 held, so the held rows are the ones still in progress under host 1's
        names once its alive keys have lapsed (before that, nothing can reclaim them).
        """
        try:
            wait_until(self._cut.is_set, ignore=(Exception,), timeout=60, what="host 1 delivering its third alert")
        finally:
            self._services.sink.on_send = None
        at = time.monotonic()
        workers = host_workers(self._control, HOST)
        with psycopg.connect(dsn(database), autocommit=True) as conn:
            db_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
            result = Cut(at=at, db_at=db_at, workers=workers)

            def lapsed() -> bool:
                return not any(self._control.exists(f"alert:worker:{name}:alive") for name in workers)

            wait_until(lapsed, timeout=45, what="host 1's alive keys lapsing", interval=0.1)
            result.held = _held(conn, workers)
        result.alive_lapse_seconds = time.monotonic() - at
        return result


def _held(conn: psycopg.Connection[tuple[object, ...]], workers: set[str]) -> set[str]:
    rows = conn.execute(
        "SELECT id FROM alert_deliveries WHERE status = 'in_progress' AND claimed_by = ANY(%s)", (list(workers),)
    ).fetchall()
    return {str(r[0]) for r in rows}


@dataclass(frozen=True)
class Reclaim:
    """How the cut host's claims came back: all of them by another host, with the lost attempt counted."""

    reclaimed: int  # held rows delivered by another host's worker after a reclaim (attempts >= 1)
    recovery_seconds: float  # cut -> the last held row delivered (database clock)
    forced: set[str]  # held rows the provider had accepted from the cut host before the cut


def judge_reclaim(cut: Cut, sends: list[Send], database: str) -> Reclaim:
    """Read back the held rows: who delivered them, when, and which the provider already had from host 1."""
    host = netns.host_address(HOST)
    with psycopg.connect(dsn(database)) as conn:
        rows = conn.execute(
            "SELECT id, status, claimed_by, attempts, delivered_at FROM alert_deliveries WHERE id = ANY(%s)",
            (sorted(cut.held),),
        ).fetchall()
    # Reclaimed: delivered by another host's worker after a reclaim that counted host 1's lost attempt
    # (attempts >= 1). The new claim's own send adds one more; a claim that found host 1's sent marker (its
    # acceptance reached Redis before the cut) ends the row delivered without sending, so adds none.
    reclaimed = [
        r for r in rows if r[1] == "delivered" and r[2] is not None and r[2] not in cut.workers and int(r[3]) >= 1
    ]
    last = max((r[4] for r in reclaimed), default=cut.db_at)
    before_heal = {s.delivery_id for s in sends if s.host == host and (not cut.healed_at or s.at < cut.healed_at)}
    accepted = {delivery_of(m) for m in before_heal}
    return Reclaim(
        reclaimed=len(reclaimed),
        recovery_seconds=(last - cut.db_at).total_seconds(),
        forced=cut.held & accepted,
    )


def after_heal(worker: SupervisedWorker, control: redis.Redis, database: str) -> str | None:
    """Heal the link; once host 1 is back with nothing in flight, no row may have left ``delivered``.

    Host 1 is back when one of its workers (the old process, or one its supervisor restarted) is alive and
    reports ``in_flight`` 0: every job it held has ended and written whatever it was going to write.
    """
    netns.heal(HOST)

    def back_and_idle() -> bool:
        worker.poll()
        for name in host_workers(control, HOST):
            alive = control.exists(f"alert:worker:{name}:alive")
            if alive and control.hget(f"alert:worker:{name}", "in_flight") in (b"0", "0"):
                return True
        return False

    wait_until(back_and_idle, ignore=(Exception,), timeout=60, what="host 1 back and idle after the heal")
    with psycopg.connect(dsn(database)) as conn:
        moved = conn.execute("SELECT count(*) FROM alert_deliveries WHERE status <> 'delivered'").fetchone()
    return "a healed worker overwrote newer state" if moved and moved[0] else None


def delivery_of(message_id: str) -> str:
    """``<partition-3.0@example.org>`` -> ``partition-3`` (Message-ID is ``<id>.<n>@domain``)."""
    return message_id.strip("<>").split("@", 1)[0].rsplit(".", 1)[0]
