"""send_alert's process-level behaviour: one enqueue client per process, the id whenever the row is
committed, and admission when Redis cannot say how deep the queue is (docs/contract.md §6.3)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import fakeredis
import pytest
import redis
import rq.scripts
import structlog

from alert_worker import resources
from alert_worker.producer import QueueAdmission, send_alert
from alert_worker.settings import Settings
from alert_worker.store import NewDelivery

SETTINGS = Settings.from_env(
    {
        "DATABASE_URL": "postgresql://unused@127.0.0.1:1/x",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "ALERT_RECIPIENT_HASH_SECRET": "s",
    }
)


class ProducerFakeStore:
    """The three statements a producer makes, in memory; takes the store's constructor arguments."""

    rows: ClassVar[dict[str, NewDelivery]] = {}

    def __init__(self, **_: Any) -> None:
        pass

    def recipient_hash_secret(self, configured: str = "") -> str:
        return configured or "generated"

    def create(self, new: NewDelivery) -> tuple[str, bool]:
        if new.id in self.rows:
            return new.id, False
        self.rows[new.id] = new
        return new.id, True

    def existing_id(self, delivery_id: str | None, dedup_key: str | None) -> str | None:
        return delivery_id if delivery_id in self.rows else None


class NoPool:
    def close(self) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[fakeredis.FakeServer]:
    """Every open_redis() is a new client (as in production) on one fake server; Postgres is in memory."""
    server = fakeredis.FakeServer()
    ProducerFakeStore.rows = {}
    monkeypatch.setattr(resources, "_enqueue_clients", {})
    monkeypatch.setattr(resources, "open_redis", lambda settings: fakeredis.FakeRedis(server=server))
    monkeypatch.setattr(resources, "open_job_pool", lambda settings: NoPool())
    monkeypatch.setattr("alert_worker.wiring._ClaimFirstStore", ProducerFakeStore)
    yield server


def _registered_scripts() -> int:
    # rq 3.0 keeps one registered Lua script per Redis client object in this module dict, and never lets
    # go of it: the leak issue 9 item 6 is about. Read only here, in a test.
    return len(rq.scripts._registered_scripts)


def test_a_thousand_send_alert_calls_keep_rq_script_registry_flat(server: fakeredis.FakeServer) -> None:
    """Enqueues go through one client per process, so RQ registers its script once, not per call."""
    send_alert("email", "ops@example.com", "s", "b", delivery_id="warm-up", settings=SETTINGS)
    before = _registered_scripts()
    for n in range(1000):
        assert send_alert("email", "ops@example.com", "s", "b", delivery_id=f"d-{n}", settings=SETTINGS).enqueued
    assert _registered_scripts() == before
    assert fakeredis.FakeRedis(server=server).llen("rq:queue:alerts") == 1001


def test_send_alert_returns_the_id_when_the_row_is_committed_but_the_enqueue_fails(
    server: fakeredis.FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep enqueues it later; a producer retrying with this id creates nothing more."""

    def refuse(*args: Any, **kwargs: Any) -> bool:
        raise redis.ConnectionError("Redis went away")

    monkeypatch.setattr("alert_worker.rq_jobs.RqEnqueuer.enqueue_now", refuse)
    outcome = send_alert("email", "ops@example.com", "s", "b", delivery_id="kept-1", settings=SETTINGS)
    assert (outcome.delivery_id, outcome.created, outcome.enqueued) == ("kept-1", True, False)
    again = send_alert("email", "ops@example.com", "s", "b", delivery_id="kept-1", settings=SETTINGS)
    assert (again.delivery_id, again.created) == ("kept-1", False)
    assert list(ProducerFakeStore.rows) == ["kept-1"]


def test_send_alert_refuses_an_empty_delivery_id() -> None:
    """An empty --id is a producer bug, not a request for a new UUID."""
    with pytest.raises(ValueError, match="must not be empty"):
        send_alert("email", "ops@example.com", "s", "b", delivery_id="", settings=SETTINGS)


def test_queue_admission_admits_and_says_so_when_redis_cannot_say() -> None:
    """An unreachable Redis does not block producers: check() admits (None: depth unknown) and logs it."""
    down = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    with structlog.testing.capture_logs() as logs:
        assert QueueAdmission(client=down, prefix="alert:", max_depth=1).check() is None
    assert [entry["event"] for entry in logs] == ["queue_depth_unknown"]
