"""The store's SQL on the real PostgreSQL: atomic claims, fencing, database-clock timing, recovery."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from alert_worker.errors import ClaimLostError
from alert_worker.models import DeliveryStatus
from alert_worker.store import DeliveryStore, NewDelivery
from tests.cluster.pgbouncer import pool_kwargs

PAYLOAD = {"recipient": "ops@example.com", "subject": "Disk full", "body": "db-1 at 99%"}


@pytest.fixture
def pool(database_url: str) -> Iterator[ConnectionPool]:
    with ConnectionPool(database_url, min_size=1, max_size=25, open=True, kwargs=pool_kwargs()) as p:
        yield p


@pytest.fixture
def store(pool: ConnectionPool) -> DeliveryStore:
    return DeliveryStore(pool=pool, stuck_after_seconds=900)


def new(delivery_id: str = "delivery-1", **extra: object) -> NewDelivery:
    fields: dict[str, object] = {
        "id": delivery_id,
        "channel": "email",
        "recipient_masked": "o***@example.com",
        "recipient_hash": "0123456789abcdef",
        "payload": PAYLOAD,
        "queue": "alerts",
    }
    fields.update(extra)
    return NewDelivery(**fields)  # type: ignore[arg-type]


def sql(database_url: str, query: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def test_migrate_is_idempotent_and_keeps_the_generated_secret(store: DeliveryStore, database_url: str) -> None:
    """Running migrate again changes nothing; the recipient-hash secret is generated once."""
    [(secret,)] = sql(database_url, "SELECT value FROM alert_worker_meta WHERE key = 'recipient_hash_secret'")
    store.migrate()
    store.migrate()
    assert sql(database_url, "SELECT value FROM alert_worker_meta")[0][0] == secret
    assert len(str(secret)) == 64


def test_a_claim_creates_a_missing_row_from_the_jobs_arguments(store: DeliveryStore, database_url: str) -> None:
    """The spec's plain "delivery-1" with no prior row: created and claimed in one statement."""
    claim = store.claim(new())
    assert claim is not None and claim.created
    assert claim.row.status is DeliveryStatus.IN_PROGRESS and claim.row.payload == PAYLOAD
    [(status, recipient, token, queue)] = sql(
        database_url, "SELECT status, recipient, claim_token::text, queue FROM alert_deliveries WHERE id = 'delivery-1'"
    )
    assert (status, recipient, token, queue) == ("in_progress", "o***@example.com", claim.token, "alerts")


def test_twenty_threads_claiming_one_row_produce_exactly_one_winner(store: DeliveryStore) -> None:
    """Only the claimer sends: the claim is one atomic statement."""
    store.create(new())
    barrier = threading.Barrier(20)
    wins: list[object] = []
    lock = threading.Lock()

    def race() -> None:
        barrier.wait()
        claim = store.claim(new())
        if claim is not None:
            with lock:
                wins.append(claim)

    threads = [threading.Thread(target=race) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(wins) == 1


def test_twenty_threads_racing_to_create_and_claim_a_new_id_produce_one_winner(store: DeliveryStore) -> None:
    barrier = threading.Barrier(20)
    wins: list[bool] = []

    def race() -> None:
        barrier.wait()
        if store.claim(new("fresh-id")) is not None:
            wins.append(True)

    threads = [threading.Thread(target=race) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert wins == [True]


def test_a_pending_row_is_claimable_only_once_due_by_the_database_clock(
    store: DeliveryStore, database_url: str
) -> None:
    store.create(new())
    sql(database_url, "UPDATE alert_deliveries SET next_attempt_at = now() + interval '1 hour'")
    assert store.claim(new()) is None
    sql(database_url, "UPDATE alert_deliveries SET next_attempt_at = now() - interval '1 second'")
    assert store.claim(new()) is not None


def test_a_stuck_claim_is_reclaimed_and_counts_the_lost_attempt(store: DeliveryStore, database_url: str) -> None:
    first = store.claim(new())
    assert first is not None
    assert store.claim(new()) is None, "a fresh claim is held"
    sql(database_url, "UPDATE alert_deliveries SET last_attempt_at = now() - interval '901 seconds'")
    second = store.claim(new())
    assert second is not None and not second.created and second.row.attempts == 1
    with pytest.raises(ClaimLostError):
        store.mark_delivered("delivery-1", first.token, attempts=1, message_id="<x>")
    store.mark_delivered("delivery-1", second.token, attempts=2, message_id="<y>")


@pytest.mark.parametrize("status", ["delivered", "failed", "poison"], ids=["delivered", "failed", "poison"])
def test_terminal_rows_are_never_claimed(store: DeliveryStore, database_url: str, status: str) -> None:
    store.create(new())
    sql(database_url, "UPDATE alert_deliveries SET status = %s", status)
    assert store.claim(new()) is None


def test_delivered_erases_the_payload_and_records_the_provider_id(store: DeliveryStore, database_url: str) -> None:
    claim = store.claim(new())
    assert claim is not None
    latency = store.mark_delivered("delivery-1", claim.token, attempts=1, message_id="<delivery-1.0@example.org>")
    assert latency >= 0
    [(status, payload, mid, attempts, delivered_at)] = sql(
        database_url, "SELECT status, payload, provider_message_id, attempts, delivered_at FROM alert_deliveries"
    )
    assert (status, payload, mid, attempts) == ("delivered", None, "<delivery-1.0@example.org>", 1)
    assert delivered_at is not None


def test_a_retry_goes_back_to_pending_with_next_attempt_at_on_the_database_clock(store: DeliveryStore) -> None:
    claim = store.claim(new())
    assert claim is not None
    next_at, now = store.schedule_retry("delivery-1", claim.token, attempts=1, delay_seconds=30.0, error="smtp 451")
    assert next_at - now == timedelta(seconds=30)
    row = store.get("delivery-1")
    assert row is not None and row.status is DeliveryStatus.PENDING and row.attempts == 1
    assert store.claim(new()) is None, "not due yet"


def test_deferrals_count_separately_and_keep_the_first_deferral_time(store: DeliveryStore, database_url: str) -> None:
    claim = store.claim(new())
    assert claim is not None
    store.defer("delivery-1", claim.token, delay_seconds=0.0, error="rate_limited")
    [(since,)] = sql(database_url, "SELECT deferred_since FROM alert_deliveries")
    claim = store.claim(new())
    assert claim is not None
    store.defer("delivery-1", claim.token, delay_seconds=10.0, error="rate_limited")
    [(attempts, deferrals, since_again)] = sql(
        database_url, "SELECT attempts, deferrals, deferred_since FROM alert_deliveries"
    )
    assert (attempts, deferrals, since_again) == (0, 2, since)


def test_the_sweep_takes_overdue_and_stuck_rows_once_per_grace_period(store: DeliveryStore, database_url: str) -> None:
    """Two passes in a row: the second finds nothing (rows are stamped)."""
    store.create(new("overdue"))
    store.create(new("fresh"))
    store.create(new("stuck"))
    assert store.claim(new("stuck")) is not None
    sql(database_url, "UPDATE alert_deliveries SET updated_at = now() - interval '2 minutes' WHERE id = 'overdue'")
    sql(
        database_url,
        "UPDATE alert_deliveries SET last_attempt_at = now() - interval '1 hour', "
        "updated_at = now() - interval '1 hour' WHERE id = 'stuck'",
    )
    taken = {r.id: r for r in store.take_overdue(grace_seconds=60)}
    assert set(taken) == {"overdue", "stuck"}
    assert taken["overdue"].payload == PAYLOAD
    assert store.take_overdue(grace_seconds=60) == []
    assert store.claim(new("overdue")) is not None, "the stamp makes it due now"
    assert store.claim(new("stuck")) is not None, "the stuck claim can be taken over"


def test_replay_moves_a_poison_row_back_once_and_resolve_erases_the_payload(store: DeliveryStore) -> None:
    for delivery_id in ("p1", "p2"):
        claim = store.claim(new(delivery_id))
        assert claim is not None
        store.poison(delivery_id, claim.token, attempts=5, error="attempts_exhausted")
    assert [r.id for r in store.replay(["p1"])] == ["p1"]
    assert store.replay(["p1"]) == [], "replaying twice enqueues once"
    row = store.get("p1")
    assert row is not None and (row.status, row.attempts, row.deferrals) == (DeliveryStatus.PENDING, 0, 0)
    assert store.resolve(["p2"], note="handled by phone") == ["p2"]
    row = store.get("p2")
    assert row is not None and row.status is DeliveryStatus.FAILED and row.payload is None
    assert store.counts() == {"pending": 1, "in_progress": 0, "delivered": 0, "failed": 1, "poison": 0}


def test_create_with_an_existing_id_or_dedup_key_creates_nothing(store: DeliveryStore) -> None:
    assert store.create(new("a", dedup_key="k1")) == ("a", True)
    assert store.create(new("a")) == ("a", False)
    assert store.create(new("b", dedup_key="k1")) == ("a", False)
    assert store.counts()["pending"] == 1
