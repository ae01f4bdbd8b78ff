"""The overview's Redis reads (on fakeredis), its JSON shape and its one screen."""

from __future__ import annotations

import fakeredis
import pytest
import redis

from alert_worker.cooldown import ChannelPauses, paused_channels
from alert_worker.metrics import retry_reason
from alert_worker.overview import Overview, WorkerInfo, cooldown_count, live_workers, render_text
from alert_worker.suppression_commands import held_by


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
        "paused",
        "held",
    ]
    assert data["paused"] == {}
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


def test_a_paused_channel_is_shown_with_its_reason() -> None:
    """§7.7: the overview names each paused channel and why, in the JSON and on the screen."""
    view = _view(paused={"email": "smtp_auth_failed 535: check SMTP_USER and SMTP_PASSWORD"})
    assert view.as_json()["paused"] == {"email": "smtp_auth_failed 535: check SMTP_USER and SMTP_PASSWORD"}
    assert "PAUSED email: smtp_auth_failed 535" in render_text(view)
    assert "PAUSED" not in render_text(_view())


def test_paused_channels_are_read_under_the_prefix_only(client: redis.Redis) -> None:
    ChannelPauses(client=client, key_prefix="alert:", pause_seconds=300).pause("sms", "twilio 20003 refused")
    client.set("staging:paused:email", "other fleet")
    assert paused_channels(client, "alert:") == {"sms": "twilio 20003 refused"}
    assert 0 < client.pttl("alert:paused:sms") <= 300_000


@pytest.mark.parametrize(
    ("channel", "says"),
    [("sms", "Twilio is asked"), ("email", "Message-ID"), ("slack", "posted again")],
    ids=["sms", "email", "slack"],
)
def test_status_explains_an_unknown_outcome_for_the_delivery_s_own_channel(channel: str, says: str) -> None:
    """Issue 20 point 8: only SMS is looked up; e-mail and Slack say what really happens next."""
    text = held_by("outcome_unknown: no answer after sending", channel)
    assert text is not None and says in text
    assert ("Twilio" in text) is (channel == "sms")


def test_status_names_a_failed_look_up_and_a_channel_pause() -> None:
    assert "Twilio could not be asked" in (held_by("outcome_unknown: twilio lookup failed: HTTP 500", "sms") or "")
    assert "channel pause" in (held_by("channel_paused: smtp_auth_failed 535", "email") or "")


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


@pytest.mark.parametrize(
    ("side", "known_line", "unknown_lines", "nulls"),
    [
        (
            "redis",
            "poison: 0   cooldowns: unknown   suppressions: 2",
            ["workers: unknown", "scheduler: unknown"],
            ("cooldowns", "workers", "scheduler", "paused"),
        ),
        (
            "postgres",
            "poison: unknown   cooldowns: 1   suppressions: unknown",
            ["deliveries: unknown", "oldest due pending: unknown"],
            ("deliveries", "oldest_due_pending_seconds", "poison", "suppressions", "held"),
        ),
    ],
    ids=["redis-down", "postgres-down"],
)
def test_a_side_that_did_not_answer_reads_unknown_never_zero(
    side: str, known_line: str, unknown_lines: list[str], nulls: tuple[str, ...]
) -> None:
    """The screen says which side is missing and why; --json has its parts null and an ``unknown`` object."""
    view = _view(unknown={side: "ConnectionError: refused"})
    text = render_text(view)
    assert text.splitlines()[0] == f"UNKNOWN: {side} did not answer (ConnectionError: refused)"
    assert known_line in text and all(line in text for line in unknown_lines)
    shown = view.as_json()
    assert shown["unknown"] == {side: "ConnectionError: refused"}
    assert all(shown[key] is None for key in nulls)
    assert all(shown[key] is not None for key in set(shown) - set(nulls) - {"oldest_due_pending_seconds"})


def test_the_json_has_no_unknown_key_when_both_sides_answered() -> None:
    assert "unknown" not in _view().as_json()
