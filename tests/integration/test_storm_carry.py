"""Held and carried (docs/contract.md §8) on the real Postgres and Redis, jobs run in process.

E-mail goes to the loopback SMTP sink; Slack and SMS to ``responses``-mocked providers. The per-recipient
window is emptied through the limiter's state (its sorted set), never by waiting.
"""

from __future__ import annotations

import os
import urllib.parse
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg_pool import ConnectionPool

from alert_worker.entrypoint import execute_delivery_job
from alert_worker.errors import ClaimLostError
from alert_worker.sent_marks import SentMarks
from alert_worker.store import DeliveryStore, NewDelivery
from tests.support.http_providers import MockedProviders, channel_env, mocked_providers
from tests.support.smtp import SmtpSink

SLACK_URL = "https://hooks.slack.com/services/T0/B0/storm"
RECIPIENT = {"email": "oncall@example.com", "slack": SLACK_URL, "sms": "+15551230000"}
LIMIT_ENV = {
    "email": "ALERT_RATE_EMAIL_PER_RECIPIENT_HOUR",
    "slack": "ALERT_RATE_SLACK_PER_RECIPIENT_HOUR",
    "sms": "ALERT_RATE_SMS_PER_RECIPIENT_HOUR",
}


@pytest.fixture
def providers(monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str]) -> Iterator[MockedProviders]:
    env = {**worker_env, **channel_env(slack_default=SLACK_URL, twilio_token="t" * 32)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for variable in LIMIT_ENV.values():
        monkeypatch.setenv(variable, "1")
    with mocked_providers() as mocked:
        yield mocked


def _rows(database_url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT id, status, error_message, delivered_via, provider_message_id, attempts FROM alert_deliveries"
        ).fetchall()
    return {r[0]: {"status": r[1], "error": r[2], "via": r[3], "mid": r[4], "attempts": r[5]} for r in rows}


def _window_passes(client: redis.Redis) -> None:
    """An hour for the per-recipient limit: its window entries are gone."""
    for key in client.scan_iter("alert:rl:recipient:*"):
        client.delete(key)


def _storm(channel: str, n: int) -> list[str]:
    ids = [f"{channel}-storm-{i:02d}" for i in range(n)]
    for i, delivery_id in enumerate(ids):
        execute_delivery_job(delivery_id, channel, RECIPIENT[channel], f"db-{i} disk full", f"/var at 9{i % 10}%")
    return ids


def _received(channel: str, providers: MockedProviders, smtp_sink: SmtpSink) -> list[str]:
    """Every message the provider accepted, as the recipient sees its text."""
    if channel == "email":
        return [m.content.decode() for m in smtp_sink.accepted]
    if channel == "slack":
        import json

        return [json.loads(r.body or b"{}")["text"] for r in providers.slack_requests]
    return [urllib.parse.parse_qs(str(r.body))["Body"][0] for r in providers.twilio_requests]


@pytest.mark.parametrize("channel", ["email", "slack", "sms"])
def test_the_next_message_to_a_recipient_carries_every_held_delivery_and_names_its_carrier(
    channel: str,
    providers: MockedProviders,
    smtp_sink: SmtpSink,
    database_url: str,
    redis_client: redis.Redis,
) -> None:
    """Limit 1 an hour: the first of 17 goes alone, 16 are held; once a slot frees, the next one's message
    carries them (oldest first), 17 alerts in one message: 2 messages, 18 delivered, 16 naming the carrier,
    no provider id of their own."""
    ids = _storm(channel, 17)
    rows = _rows(database_url)
    assert [rows[i]["status"] for i in ids] == ["delivered"] + ["pending"] * 16
    assert all(rows[i]["error"].startswith("rate_limited: recipient limit") for i in ids[1:])
    _window_passes(redis_client)
    result = execute_delivery_job(f"{channel}-carrier", channel, RECIPIENT[channel], "db-17 disk full", "/var at 97%")
    assert result["outcome"] == "delivered"
    rows = _rows(database_url)
    assert {rows[i]["status"] for i in rows} == {"delivered"}
    assert sorted(i for i, r in rows.items() if r["via"] == f"{channel}-carrier") == ids[1:]
    assert all(rows[i]["mid"] is None and rows[i]["attempts"] == 1 for i in ids[1:])
    assert redis_client.hget("alert:metrics:carried", channel) == b"16"
    texts = _received(channel, providers, smtp_sink)
    assert len(texts) == 2, "one message for the first, one for the carrier and the sixteen it carried"
    digest = texts[1]
    if os.environ.get("STORM_TEXTS_DIR"):  # keep the text a person sees (for a release note)
        Path(os.environ["STORM_TEXTS_DIR"], f"{channel}.txt").write_text(digest)
    if channel == "sms":
        assert digest.startswith("17 alerts:\n- db-17 disk full\n- db-1 disk full\n- db-2 disk full")
    elif channel == "slack":
        assert digest.startswith("*17 alerts*\n\n*db-17 disk full*\n/var at 97%\n_id: slack-carrier_")
        assert all(f"_id: {i}_" in digest for i in ids[1:])
    else:
        assert "Subject: [17 alerts] db-17 disk full" in digest
        assert digest.count("Message-ID:") == 1
        assert "X-Alert-Carried-Ids: " + ", ".join(ids[1:3]) in digest
        assert all(f"Delivery: {i}" in digest for i in ids[1:])


def test_carrying_stops_at_the_digest_size_and_the_rest_stay_held(
    providers: MockedProviders, smtp_sink: SmtpSink, database_url: str, redis_client: redis.Redis, monkeypatch: Any
) -> None:
    """ALERT_DIGEST_MAX_ITEMS=5 counts the carrier: 4 carried, oldest first; the newer ones stay held."""
    monkeypatch.setenv("ALERT_DIGEST_MAX_ITEMS", "5")
    ids = _storm("email", 8)
    _window_passes(redis_client)
    execute_delivery_job("carrier", "email", RECIPIENT["email"], "s", "b")
    rows = _rows(database_url)
    assert [i for i in ids if rows[i]["via"] == "carrier"] == ids[1:5]
    assert [rows[i]["status"] for i in ids[5:]] == ["pending"] * 3


@pytest.mark.parametrize(
    ("digest", "status"),
    [("on", "pending"), ("off", "poison")],
    ids=["digest-on-held-not-poisoned", "digest-off-poisoned-as-before"],
)
def test_a_delivery_held_by_the_recipient_limit_is_never_poisoned_for_waiting(
    digest: str, status: str, providers: MockedProviders, database_url: str, monkeypatch: Any
) -> None:
    """With a 0 s deferral budget, §3 poisons at the first deferral; §8 holds it (ALERT_DIGEST=off: as before)."""
    monkeypatch.setenv("ALERT_MAX_DEFER_SECONDS", "0")
    monkeypatch.setenv("ALERT_DIGEST", digest)
    _storm("sms", 2)
    row = _rows(database_url)["sms-storm-01"]
    assert row["status"] == status
    if digest == "off":
        assert row["error"] == "rate_limited_too_long: recipient limit"


def test_with_the_digest_off_the_next_message_carries_nothing(
    providers: MockedProviders, database_url: str, redis_client: redis.Redis, monkeypatch: Any
) -> None:
    monkeypatch.setenv("ALERT_DIGEST", "off")
    _storm("sms", 3)
    _window_passes(redis_client)
    execute_delivery_job("next", "sms", RECIPIENT["sms"], "s", "b")
    assert [r["via"] for r in _rows(database_url).values()] == [None] * 4
    assert len(providers.twilio_requests) == 2


def test_a_carrying_send_the_provider_refuses_hands_the_carried_back_to_held(
    providers: MockedProviders, smtp_sink: SmtpSink, database_url: str, redis_client: redis.Redis
) -> None:
    """A 451 for the carrier: it is retried, the carried ones are pending and held again, unclaimed."""
    ids = _storm("email", 3)
    _window_passes(redis_client)
    smtp_sink.data_replies.append("451 4.3.0 try again later")
    result = execute_delivery_job("carrier", "email", RECIPIENT["email"], "s", "b")
    assert result["outcome"] == "retry_scheduled"
    rows = _rows(database_url)
    assert [(rows[i]["status"], rows[i]["error"][:29]) for i in ids[1:]] == [
        ("pending", "rate_limited: recipient limit")
    ] * 2
    with psycopg.connect(database_url) as conn:
        tokens = conn.execute("SELECT claim_token FROM alert_deliveries WHERE id = ANY(%s)", (ids[1:],)).fetchall()
    assert tokens == [(None,), (None,)]


# -- the store's statements ------------------------------------------------------------------------------
@pytest.fixture
def store(database_url: str) -> Iterator[DeliveryStore]:
    with ConnectionPool(database_url, min_size=1, max_size=4, open=True) as pool:
        yield DeliveryStore(pool=pool)


def _held_row(store: DeliveryStore, database_url: str, delivery_id: str) -> None:
    store.create(
        NewDelivery(
            id=delivery_id,
            channel="sms",
            recipient_masked="***0000",
            recipient_hash="h1",
            payload={"recipient": "+15551230000", "subject": delivery_id, "body": ""},
        )
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE alert_deliveries SET error_message = 'rate_limited: recipient limit', "
            "next_attempt_at = now() + interval '1 hour' WHERE id = %s",
            (delivery_id,),
        )


def _carrier(store: DeliveryStore) -> tuple[str, str]:
    claim = store.claim(
        NewDelivery(
            id="carrier",
            channel="sms",
            recipient_masked="***0000",
            recipient_hash="h1",
            payload={"recipient": "+15551230000", "subject": "c", "body": ""},
        )
    )
    assert claim is not None
    return claim.row.id, claim.token


def test_a_carried_claim_taken_over_is_not_written_and_the_rest_are_written_with_the_carrier(
    store: DeliveryStore, database_url: str
) -> None:
    for i in range(3):
        _held_row(store, database_url, f"held-{i}")
    carrier, token = _carrier(store)
    carried = store.claim_held(channel="sms", recipient_hash="h1", exclude_id=carrier, limit=10)
    assert [c.row.id for c in carried] == ["held-0", "held-1", "held-2"]
    assert len({c.token for c in carried}) == 3, "each carried row has a claim token of its own"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE alert_deliveries SET claim_token = gen_random_uuid() WHERE id = 'held-1'")
    _, lost = store.mark_delivered_carrying(carrier, token, attempts=1, message_id="SM1", carried=carried)
    assert lost == ["held-1"]
    rows = _rows(database_url)
    assert (rows["held-0"]["status"], rows["held-0"]["via"]) == ("delivered", "carrier")
    assert rows["held-1"]["status"] == "in_progress" and rows["held-1"]["via"] is None
    assert rows["carrier"]["mid"] == "SM1"


def test_a_lost_carrier_claim_writes_nothing_at_all(store: DeliveryStore, database_url: str) -> None:
    _held_row(store, database_url, "held-0")
    carrier, token = _carrier(store)
    carried = store.claim_held(channel="sms", recipient_hash="h1", exclude_id=carrier, limit=10)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE alert_deliveries SET claim_token = gen_random_uuid() WHERE id = 'carrier'")
    with pytest.raises(ClaimLostError):
        store.mark_delivered_carrying(carrier, token, attempts=1, message_id="SM1", carried=carried)
    assert {r["status"] for r in _rows(database_url).values()} == {"in_progress"}


def test_a_carried_row_reclaimed_after_its_carrier_died_ends_delivered_via_the_marker_without_sending(
    providers: MockedProviders, database_url: str, redis_client: redis.Redis
) -> None:
    """The provider accepted the carrier's message and the worker died before the writes: the carried row's
    sent marker (written right after acceptance) ends it delivered via that carrier, with no request."""
    SentMarks(client=redis_client).record_carried(["sms-late"], via="the-carrier", message_id="SM9", log=_NoLog())
    result = execute_delivery_job("sms-late", "sms", RECIPIENT["sms"], "s", "b")
    assert result["outcome"] == "delivered" and result["message_id"] is None
    row = _rows(database_url)["sms-late"]
    assert (row["status"], row["via"], row["mid"]) == ("delivered", "the-carrier", None)
    assert providers.twilio_requests == []


class _NoLog:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class _ClaimStolenDuringSend(deque[Any]):
    """Twilio's answer for the carrier, given after another job took the carrier's claim (as a reclaim would)."""

    def __init__(self, database_url: str) -> None:
        super().__init__([(201, '{"sid": "SM' + "7" * 32 + '", "status": "queued"}', {})])
        self.database_url = database_url

    def popleft(self) -> Any:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute("UPDATE alert_deliveries SET claim_token = gen_random_uuid() WHERE id = 'carrier'")
        return super().popleft()


def test_a_carrying_send_accepted_but_not_recorded_leaves_the_carried_unheld_and_ends_them_via_their_markers(
    providers: MockedProviders, database_url: str, redis_client: redis.Redis
) -> None:
    """The carrier's claim is lost between the acceptance and the write: nothing is written, the carried rows go
    back pending but not held (no other message may carry them), and their own jobs end them delivered via the
    carrier with no request."""
    ids = _storm("sms", 3)
    _window_passes(redis_client)
    providers.twilio_replies = _ClaimStolenDuringSend(database_url)
    result = execute_delivery_job("carrier", "sms", RECIPIENT["sms"], "s", "b")
    assert result["outcome"] == "skipped" and result["error"] == "claim_lost"
    rows = _rows(database_url)
    assert [(rows[i]["status"], rows[i]["error"]) for i in ids[1:]] == [("pending", "sent_unrecorded: carried")] * 2
    sent = len(providers.twilio_requests)
    for delivery_id in ids[1:]:
        assert execute_delivery_job(delivery_id, "sms", RECIPIENT["sms"], "x", "y")["outcome"] == "delivered"
    rows = _rows(database_url)
    assert [(rows[i]["status"], rows[i]["via"], rows[i]["mid"]) for i in ids[1:]] == [
        ("delivered", "carrier", None)
    ] * 2
    assert len(providers.twilio_requests) == sent, "nothing sent again"
