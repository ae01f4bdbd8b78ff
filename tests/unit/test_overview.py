"""The overview's Redis reads (on fakeredis), its JSON shape and its one screen."""

from __future__ import annotations

import fakeredis
import pytest
import redis

from alert_worker.metrics import retry_reason
from alert_worker.overview import Overview, WorkerInfo, cooldown_count, live_workers, render_text


@pytest.fixture
def client() -> redis.Redis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def _register(client: redis.Redis, name: str, *, threads: int, in_flight: int, alive: bool) -> None:
    client.hset(f"alert:worker:{name}", mapping={"threads": threads, "in_flight": in_flight, "started_at": "1"})
    if alive:
        client.set(f"alert:worker:{name}:alive", 1, ex=30)


def test_only_registrations_with_an_alive_key_are_live_workers(client: redis.Redis) -> None:
    """A hash whose alive key expired is a dead worker; other keys under worker: are ignored."""
    _register(client, "w-1", threads=8, in_flight=3, alive=True)
    _register(client, "w-2", threads=4, in_flight=4, alive=False)
    _register(client, "host:7:w-3", threads=2, in_flight=0, alive=True)
    client.set("alert:worker:stray", "not a hash")
    client.set("alert:worker:stray:alive", 1)
    client.hset("other:worker:w-9", mapping={"threads": 1})
    client.set("other:worker:w-9:alive", 1)
    assert live_workers(client, "alert:") == [
        WorkerInfo(name="host:7:w-3", threads=2, in_flight=0),
        WorkerInfo(name="w-1", threads=8, in_flight=3),
    ]


def test_cooldowns_are_counted_under_the_prefix_only(client: redis.Redis) -> None:
    """Every ``<prefix>cooldown:*`` key counts (they expire by TTL); other prefixes do not."""
    for i in range(2500):  # more than one SCAN page
        client.set(f"alert:cooldown:slack:{i:04x}", 1, ex=30)
    client.set("staging:cooldown:slack:abc", 1)
    client.set("alert:cooldownish", 1)
    assert cooldown_count(client, "alert:") == 2500


def _view(**overrides: object) -> Overview:
    base: dict[str, object] = {
        "deliveries": {
            s: {"email": 0, "slack": 0, "sms": 0} for s in ("pending", "in_progress", "delivered", "failed", "poison")
        },
        "oldest_due_pending_seconds": 42.5,
        "poison": 0,
        "cooldowns": 1,
        "suppressions": 2,
        "workers": [WorkerInfo(name="w-1", threads=8, in_flight=3)],
        "scheduler": {"alerts": True, "bulk": False},
    }
    return Overview(**{**base, **overrides})  # type: ignore[arg-type]


def test_the_json_is_exactly_the_contract_object() -> None:
    """§6.4 (with §8's held): these keys and nothing else; workers as objects with name, threads, in_flight."""
    data = _view().as_json()
    assert list(data) == [
        "deliveries",
        "oldest_due_pending_seconds",
        "poison",
        "cooldowns",
        "suppressions",
        "workers",
        "scheduler",
        "held",
    ]
    assert data["held"] == {"email": 0, "slack": 0, "sms": 0}
    assert data["workers"] == [{"name": "w-1", "threads": 8, "in_flight": 3}]
    assert data["scheduler"] == {"alerts": True, "bulk": False}


def test_the_screen_answers_stuck_failing_and_alive_in_one_look() -> None:
    """Oldest due age, poison, cooldowns, suppressions, threads busy and a missing scheduler are spelled out."""
    text = render_text(_view(estimated=frozenset({"delivered", "failed"})))
    assert "oldest due pending: 42.5 s" in text
    assert "poison: 0   cooldowns: 1   suppressions: 2" in text
    assert "workers: 1 live, 3/8 threads busy" in text
    assert "scheduler for bulk: NO SCHEDULER" in text
    assert "~" in text.splitlines()[3] and "~" not in text.splitlines()[1], "only estimated rows are marked"
    assert len(text.splitlines()) <= 24, "one screen"


def test_nothing_due_reads_as_none_due() -> None:
    """``null`` age: nothing pending is due."""
    assert "oldest due pending: none due" in render_text(_view(oldest_due_pending_seconds=None))


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("smtp 451 4.3.0: try again later", "smtp_4xx"),
        ("smtp 421 4.7.0: too many connections", "rate_limited"),
        ("slack 429", "rate_limited"),
        ("twilio 20429 too many requests", "rate_limited"),
        ("slack 503", "server_error"),
        ("twilio 500 server error", "server_error"),
        ("smtp_timeout", "timeout"),
        ("slack timeout: ReadTimeout", "timeout"),
        ("smtp_disconnected: the server closed the connection", "disconnected"),
        ("twilio connection error: ConnectionError", "connection_error"),
        ("outcome_unknown: slack timeout after sending", "outcome_unknown"),
        ("worker_error: KeyError", "worker_error"),
        ("something new from a provider ops@example.com", "other"),
    ],
    ids=lambda v: v.split(":")[0].replace(" ", "-")[:30],
)
def test_a_retry_reason_is_folded_into_a_bounded_label(error: str, reason: str) -> None:
    """Free provider text never becomes a label value (cardinality, and no recipient in a series)."""
    assert retry_reason(error) == reason
