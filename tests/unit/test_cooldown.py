"""Cooldowns on fakeredis: key shape, TTL from Retry-After or the default, never shortened, Redis errors."""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest

from alert_worker.cooldown import Cooldowns, destination_hash


@pytest.fixture
def client() -> Iterator[fakeredis.FakeRedis]:
    server = fakeredis.FakeServer()
    fake = fakeredis.FakeRedis(server=server)
    yield fake
    fake.close()


def test_the_key_is_prefix_cooldown_channel_and_a_keyed_destination_hash(client: fakeredis.FakeRedis) -> None:
    """``alert:cooldown:<channel>:<hash>``; the hash hides the webhook URL and depends on the secret."""
    url = "https://hooks.slack.com/services/T000/B000/SECRETPATH"
    dest = destination_hash("secret", "slack", url)
    assert Cooldowns(client=client).key("slack", dest) == f"alert:cooldown:slack:{dest}"
    assert "SECRETPATH" not in dest and len(dest) == 16
    assert dest != destination_hash("other-secret", "slack", url)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(5.0, 5.0), (None, 30.0), (0.0, 30.0), (99_999.0, 3600.0)],
    ids=["retry-after", "default-when-absent", "default-when-zero", "capped-at-max"],
)
def test_a_cooldown_lasts_retry_after_else_the_default_and_is_capped(
    client: fakeredis.FakeRedis, retry_after: float | None, expected: float
) -> None:
    """TTL = Retry-After, else ALERT_COOLDOWN_SECONDS; never longer than ALERT_MAX_RETRY_DELAY."""
    cooldowns = Cooldowns(client=client, default_seconds=30.0, max_seconds=3600.0)
    assert cooldowns.start("slack", "abc", retry_after) == pytest.approx(expected)
    assert cooldowns.remaining("slack", "abc") == pytest.approx(expected, abs=0.1)


def test_a_shorter_slow_down_never_shortens_a_running_cooldown(client: fakeredis.FakeRedis) -> None:
    """A second 429 with Retry-After 2 during a 60 s cooldown leaves 60 s; a longer one extends it."""
    cooldowns = Cooldowns(client=client)
    cooldowns.start("sms", "d", 60.0)
    assert cooldowns.start("sms", "d", 2.0) == pytest.approx(60.0, abs=0.1)
    assert cooldowns.start("sms", "d", 120.0) == pytest.approx(120.0)


def test_a_destination_not_cooling_has_nothing_remaining_and_others_are_independent(
    client: fakeredis.FakeRedis,
) -> None:
    """Only the destination that was told to slow down waits; the count sees active cooldowns only."""
    cooldowns = Cooldowns(client=client)
    cooldowns.start("email", "relay-a", 10.0)
    assert cooldowns.remaining("email", "relay-b") == 0.0
    assert cooldowns.remaining("slack", "relay-a") == 0.0
    assert cooldowns.count() == 1


def test_redis_errors_are_logged_and_read_as_not_cooling() -> None:
    """A cooldown is advice: an unreachable Redis neither raises nor holds deliveries (the limiter fails closed)."""
    server = fakeredis.FakeServer()
    server.connected = False  # every command raises redis.ConnectionError
    cooldowns = Cooldowns(client=fakeredis.FakeRedis(server=server))
    assert cooldowns.start("slack", "x", 5.0) == 0.0
    assert cooldowns.remaining("slack", "x") == 0.0


def test_active_cooldowns_show_the_masked_destination_stored_with_the_key_never_the_webhook_path(
    client: fakeredis.FakeRedis,
) -> None:
    """``cooldown list`` reads what ``start`` stored; a key from before the mask was stored shows ``-``."""
    from alert_worker.cooldown import mask_destination

    url = "https://Hooks.Slack.com/services/T000/B000/SECRETPATH?x=1"
    cooldowns = Cooldowns(client=client, key_prefix="p:")
    cooldowns.start("slack", "a" * 16, 60.0, shown=mask_destination("slack", url))
    cooldowns.start("email", "b" * 16, 30.0, shown=mask_destination("email", "smtp.example.com:587"))
    client.set("p:cooldown:sms:" + "c" * 16, "1", ex=10)
    client.set("other:cooldown:slack:" + "d" * 16, "x", ex=10)
    active = cooldowns.active()
    assert [(c.channel, c.destination_hash, c.destination) for c in active] == [
        ("slack", "a" * 16, "hooks.slack.com/***"),
        ("email", "b" * 16, "smtp.example.com:587"),
        ("sms", "c" * 16, "-"),
    ]
    assert [c.channel for c in cooldowns.active("email")] == ["email"]
    assert "SECRETPATH" not in repr(active)


def test_an_sms_destination_is_masked_to_the_last_four_characters_of_account_and_sender() -> None:
    from alert_worker.cooldown import mask_destination

    shown = mask_destination("sms", "AC0123456789abcdef0123456789abcdef:+15551234567")
    assert shown == "account ***cdef from ***4567"


def test_clearing_ends_only_the_named_cooldowns(client: fakeredis.FakeRedis) -> None:
    cooldowns = Cooldowns(client=client)
    cooldowns.start("slack", "a" * 16, 60.0)
    cooldowns.start("slack", "b" * 16, 60.0)
    assert cooldowns.clear("slack", ["a" * 16, "f" * 16]) == 1
    assert [c.destination_hash for c in cooldowns.active()] == ["b" * 16]
