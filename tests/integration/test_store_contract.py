"""One contract for every delivery store the executor may be given: the in-memory fake of the unit tests
and the real Postgres ``DeliveryStore`` run the same assertions, so the fake cannot drift."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from psycopg_pool import ConnectionPool

from alert_worker.errors import ClaimLostError
from alert_worker.models import DeliveryStatus
from alert_worker.ports import DeliveryStorePort
from alert_worker.store import Claim, DeliveryStore, NewDelivery
from tests.support.fakes import FakeStore

PAYLOAD = {"recipient": "ops@example.com", "subject": "Disk full", "body": "db-1 at 99%"}
NEW = NewDelivery(
    id="contract-1",
    channel="email",
    recipient_masked="o***@example.com",
    recipient_hash="0123456789abcdef",
    payload=PAYLOAD,
    queue="alerts",
)


@pytest.fixture(params=["fake", "postgres"], ids=["in-memory-fake", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[DeliveryStorePort]:
    """The same store contract, once per implementation; mypy checks both against ``DeliveryStorePort``."""
    if request.param == "fake":
        yield FakeStore()
        return
    database_url: str = request.getfixturevalue("database_url")
    with ConnectionPool(database_url, min_size=1, max_size=4, open=True, kwargs={"autocommit": True}) as pool:
        yield DeliveryStore(pool=pool, stuck_after_seconds=900)


def _claim(store: DeliveryStorePort) -> Claim:
    claim = store.claim(NEW)
    assert claim is not None
    return claim


def test_a_claim_creates_a_missing_row_in_progress_and_a_second_claim_gets_nothing(store: DeliveryStorePort) -> None:
    """Create-and-claim is one step; a fresh claim is never shared."""
    claim = _claim(store)
    assert claim.created is True and claim.row.status is DeliveryStatus.IN_PROGRESS
    assert (claim.row.attempts, claim.row.deferrals, claim.row.payload) == (0, 0, PAYLOAD)
    assert claim.row.claim_token == claim.token and claim.row.db_now is not None
    assert store.claim(NEW) is None


def test_a_write_with_a_stale_token_raises_claim_lost_and_changes_nothing(store: DeliveryStorePort) -> None:
    """Fencing: only the current claimer may move the row."""
    _claim(store)
    with pytest.raises(ClaimLostError):
        store.mark_delivered(NEW.id, "00000000-0000-4000-8000-000000000000", attempts=1, message_id="<x>")
    row = store.get(NEW.id)
    assert row is not None and row.status is DeliveryStatus.IN_PROGRESS


def test_a_scheduled_retry_is_pending_and_not_claimable_before_it_is_due(store: DeliveryStorePort) -> None:
    """``schedule_retry`` counts the attempt and sets a due time in the future: claims wait for it."""
    claim = _claim(store)
    next_at, now = store.schedule_retry(NEW.id, claim.token, attempts=1, delay_seconds=60, error="smtp 451")
    assert next_at > now
    row = store.get(NEW.id)
    assert row is not None and row.status is DeliveryStatus.PENDING
    assert (row.attempts, row.next_attempt_at) == (1, next_at)
    assert store.claim(NEW) is None


def test_a_due_retry_is_claimed_again_with_its_attempts(store: DeliveryStorePort) -> None:
    """Due now: claimable, not created, attempts and payload kept."""
    claim = _claim(store)
    store.schedule_retry(NEW.id, claim.token, attempts=2, delay_seconds=0, error="smtp 451")
    again = _claim(store)
    assert again.created is False and again.token != claim.token
    assert (again.row.attempts, again.row.payload) == (2, PAYLOAD)


def test_deferrals_count_without_an_attempt_and_keep_the_first_deferral_time(store: DeliveryStorePort) -> None:
    """``defer`` twice: deferrals 2, attempts 0, ``deferred_since`` from the first."""
    claim = _claim(store)
    store.defer(NEW.id, claim.token, delay_seconds=0, error="rate_limited: recipient limit")
    first = store.get(NEW.id)
    assert first is not None and first.deferred_since is not None
    again = _claim(store)
    store.defer(NEW.id, again.token, delay_seconds=0, error="rate_limited: recipient limit")
    row = store.get(NEW.id)
    assert row is not None and row.status is DeliveryStatus.PENDING
    assert (row.deferrals, row.attempts, row.deferred_since) == (2, 0, first.deferred_since)


def test_delivered_erases_the_payload_and_is_never_claimed_again(store: DeliveryStorePort) -> None:
    """A delivered row is terminal for jobs."""
    claim = _claim(store)
    store.mark_delivered(NEW.id, claim.token, attempts=1, message_id="<m@example.org>")
    row = store.get(NEW.id)
    assert row is not None and row.status is DeliveryStatus.DELIVERED and row.payload is None
    assert store.claim(NEW) is None


def test_a_released_row_is_pending_without_a_due_time_and_claimable(store: DeliveryStorePort) -> None:
    """``release`` gives the claim back without an attempt (rate limiter down)."""
    claim = _claim(store)
    store.release(NEW.id, claim.token, error="rate_limiter_unavailable")
    row = store.get(NEW.id)
    assert row is not None and row.status is DeliveryStatus.PENDING and row.next_attempt_at is None
    assert _claim(store).row.attempts == 0

