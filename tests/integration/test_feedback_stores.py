"""Suppressions and unknown outcomes on the real PostgreSQL, cooldowns on the real Redis (docs/contract.md §6.2)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
import redis
from psycopg_pool import ConnectionPool

from alert_worker.cooldown import Cooldowns
from alert_worker.outcomes import UnknownOutcomes
from alert_worker.store import DeliveryStore
from alert_worker.suppression import SuppressionStore, suppression_key


@pytest.fixture
def pool(database_url: str) -> Iterator[ConnectionPool]:
    with ConnectionPool(database_url, min_size=1, max_size=2, kwargs={"autocommit": True}, open=True) as p:
        yield p


def test_the_table_has_the_contract_columns_and_primary_key(database_url: str) -> None:
    """``alert_suppressions``: channel, recipient_hash, recipient, reason, source_delivery_id, created_at."""
    with psycopg.connect(database_url) as conn:
        columns = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'alert_suppressions' "
            "ORDER BY ordinal_position").fetchall()]
        key = [r[0] for r in conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'alert_suppressions'::regclass AND i.indisprimary "
            "ORDER BY array_position(i.indkey, a.attnum)").fetchall()]
    assert columns == ["channel", "recipient_hash", "recipient", "reason", "source_delivery_id", "created_at"]
    assert key == ["channel", "recipient_hash"]


def test_add_is_idempotent_keeps_the_first_reason_and_remove_lifts_it(pool: ConnectionPool) -> None:
    """A second add changes nothing; remove answers whether there was an entry; both never raise."""
    store = SuppressionStore(source=pool)
    rhash, masked = suppression_key("secret", "sms", "+15551234567")
    assert store.add(channel="sms", rhash=rhash, masked=masked, reason="twilio 21610 STOP", source_delivery_id="d-1")
    assert not store.add(channel="sms", rhash=rhash, masked=masked, reason="operator")
    assert store.reason("sms", rhash) == "twilio 21610 STOP"
    [entry] = store.list()
    assert (entry.channel, entry.recipient, entry.source_delivery_id) == ("sms", "***4567", "d-1")
    assert store.count() == 1
    assert store.remove("sms", rhash) and not store.remove("sms", rhash)
    assert store.reason("sms", rhash) is None and store.list() == []


def test_list_filters_by_channel_and_stores_the_reason_sanitized(pool: ConnectionPool) -> None:
    """An operator's reason quoting an address or a number is stored without it."""
    store = SuppressionStore(source=pool)
    store.add(channel="email", rhash="h1", masked="o***@example.com", reason="bounced for ops@example.com")
    store.add(channel="slack", rhash="h2", masked="hooks.slack.com/***", reason="slack 404 channel_not_found")
    assert [e.channel for e in store.list("email")] == ["email"]
    assert store.reason("email", "h1") == "bounced for <email>"
    assert len(store.list()) == 2


# What an earlier release stored as the reason of a provider-added e-mail suppression, and whether the rules of
# §7.2 would add it (kept by migrate) or never would (lifted by migrate).
EARLIER_SUPPRESSIONS = [
    ("smtp recipient refused 550 5.1.1: <email>: Recipient address rejected: User unknown", True),
    ("smtp recipient refused 550 5.1.2: Host or domain name not found", True),
    ("smtp recipient refused 556 5.1.10: Recipient address has null MX", True),
    ("smtp recipient refused 550 5.2.1: Mailbox disabled", True),
    ("smtp recipient refused 5.1.1", True),
    ("smtp recipient refused -1 5.1.1: no such user", True),
    ("smtp recipient refused unparseable reply 5.1.1: no such user", True),
    ("smtp recipient refused 550 5.1.0: <email>: Sender address rejected: User unknown in local recipient table",
     False),
    ("smtp recipient refused 550 5.1.7: bad address syntax", False),
    ("smtp recipient refused 553 5.1.8: Domain of address does not exist", False),
    ("smtp recipient refused 550 5.7.1: Relaying denied", False),
    ("smtp recipient refused 550 5.1.1: <email>: Sender address rejected: not owned by user", False),
    ("smtp recipient refused 550 5.1.100: no such user", False),
    ("smtp 550 5.1.1: no such user", False),
    ("smtp sender refused 550 5.1.1: no such user", False),
]
EARLIER_IDS = [
    "rcpt-5.1.1", "rcpt-5.1.2", "rcpt-5.1.10", "rcpt-5.2.1", "rcpt-5.1.1-no-code-no-text", "rcpt-5.1.1-code--1",
    "rcpt-5.1.1-unparseable", "rcpt-5.1.0-sender-rejected", "rcpt-5.1.7", "rcpt-5.1.8", "rcpt-5.7.1",
    "rcpt-5.1.1-naming-the-sender", "rcpt-5.1.100", "after-data-5.1.1", "mail-from-5.1.1",
]


@pytest.mark.parametrize(("reason", "kept"), EARLIER_SUPPRESSIONS, ids=EARLIER_IDS)
def test_migrate_lifts_the_provider_added_email_suppressions_the_rules_would_never_add(
    pool: ConnectionPool, reason: str, kept: bool
) -> None:
    """An upgrade over an earlier release's entries: only RCPT TO 5.1.1/5.1.2/5.1.10/5.2.1 not naming the
    sender stays; the same text added by an operator, or an SMS entry, always stays. Migrate twice: idempotent."""
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO alert_suppressions (channel, recipient_hash, recipient, reason, source_delivery_id) VALUES "
            "('email', 'provider', 'o***@example.com', %(r)s, 'd-old'), ('email', 'operator', 'p***@example.com', "
            "%(r)s, NULL), ('sms', 'phone', '***4567', %(r)s, 'd-old')",
            {"r": reason},
        )
    DeliveryStore(pool=pool).migrate()
    DeliveryStore(pool=pool).migrate()
    with pool.connection() as conn:
        left = {r[0] for r in conn.execute("SELECT recipient_hash FROM alert_suppressions").fetchall()}
    assert left == ({"provider"} if kept else set()) | {"operator", "phone"}


def test_unknown_outcomes_keep_the_latest_attempt_and_clear(pool: ConnectionPool, database_url: str) -> None:
    """An attempt follows a look-up that found nothing for the one before: the latest attempt's window is
    the one to search (§7.1); a delivered SMS clears it."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO alert_deliveries (id, channel, recipient, recipient_hash) VALUES ('d-1', 'sms', '***', 'h')"
        )
        (now,) = conn.execute("SELECT now()").fetchone()  # type: ignore[misc]
    outcomes = UnknownOutcomes(source=pool)
    outcomes.record("d-1", "sms", now)
    outcomes.record("d-1", "sms", now + timedelta(seconds=30))
    outcomes.record("d-1", "sms", now + timedelta(seconds=10))  # a late writer never moves it back
    assert outcomes.since("d-1") == now + timedelta(seconds=30)
    outcomes.clear("d-1")
    assert outcomes.since("d-1") is None


def test_cooldowns_on_real_redis_share_one_key_and_expire(redis_client: redis.Redis) -> None:
    """The Lua start script and PTTL read on the real server; the key carries the TTL."""
    first = Cooldowns(client=redis_client)
    second = Cooldowns(client=redis.Redis(connection_pool=redis_client.connection_pool))  # another worker
    first.start("slack", "abc", 5.0)
    assert 4.5 < second.remaining("slack", "abc") <= 5.0
    assert 4000 < int(redis_client.pttl("alert:cooldown:slack:abc")) <= 5000
    assert second.count() == 1
