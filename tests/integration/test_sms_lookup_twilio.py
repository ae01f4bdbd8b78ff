"""The SMS unknown-outcome look-up against a loopback Twilio, on the real Postgres and Redis (§7.1).

A look-up may take a listed message as this delivery's only within the unknown attempt's window, never one
another delivery holds, and only when exactly one qualifies; otherwise the SMS is sent again. Each test
runs jobs in process (``execute_delivery_job``) against ``tests/support/fake_twilio`` over real sockets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from alert_worker import execute_delivery_job
from alert_worker.errors import MessageIdTakenError
from alert_worker.producer import send_alert
from alert_worker.resources import open_pool
from alert_worker.settings import Settings
from alert_worker.store import DeliveryStore, NewDelivery
from alert_worker.worker import sweep_pass
from tests.support.cli import InProcessCli
from tests.support.fake_twilio import FakeTwilio, redirected_to, running_fake_twilio
from tests.support.http_providers import TWILIO_FROM, channel_env

PHONE = "+15551234567"
ALERT = ("CRITICAL", "api-1 error rate 12%")
TEXT = "CRITICAL: api-1 error rate 12%"


@pytest.fixture
def env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, **channel_env(slack_default="", twilio_token="t" * 32),
            "ALERT_RATE_SMS_PER_RECIPIENT_HOUR": "0", "ALERT_RATE_SMS_PER_MIN": "0"}  # fmt: skip


@pytest.fixture
def twilio(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Iterator[FakeTwilio]:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with running_fake_twilio() as fake, redirected_to(fake.base_url):
        yield fake


def _sql(database_url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        cur = conn.execute(query, args)
        return list(cur.fetchall()) if cur.description else []


def _make_due(database_url: str, delivery_id: str) -> None:
    _sql(database_url, "UPDATE alert_deliveries SET next_attempt_at = now() WHERE id = %s", delivery_id)


def _row(database_url: str, delivery_id: str) -> tuple[Any, ...]:
    [found] = _sql(database_url, "SELECT status, provider_message_id FROM alert_deliveries WHERE id = %s", delivery_id)
    return found


def test_a_retry_never_takes_the_message_of_another_delivery_with_the_same_text(
    twilio: FakeTwilio, database_url: str
) -> None:
    """F01: A's POST is dropped before Twilio has it (outcome unknown); B, same text, is accepted. A's retry
    lists B's message (same body, in A's window) but B holds that SID: not found, A is sent."""
    twilio.script.append("drop")
    first = execute_delivery_job("a", "sms", PHONE, *ALERT)
    assert first["error"].startswith("outcome_unknown: twilio connection dropped after sending")
    b = execute_delivery_job("b", "sms", PHONE, *ALERT)
    _make_due(database_url, "a")
    retry = execute_delivery_job("a", "sms", PHONE, *ALERT, attempt=1)
    assert retry["outcome"] == "delivered"
    assert [m["body"] for m in twilio.accepted] == [TEXT, TEXT], "A was really sent"
    assert retry["message_id"] != b["message_id"]
    assert {_row(database_url, "a")[1], _row(database_url, "b")[1]} == {m["sid"] for m in twilio.accepted}


def test_after_a_replay_days_later_the_window_has_passed_and_the_sms_is_sent(
    twilio: FakeTwilio, database_url: str, cli: InProcessCli
) -> None:
    """F01b: A's unknown attempt was a day ago; a message with the same text sent today (not by any
    delivery of ours) is outside A's window: the replayed A is sent, not marked delivered with it."""
    twilio.script.extend(["drop"])
    execute_delivery_job("a", "sms", PHONE, *ALERT)
    _sql(database_url, "UPDATE alert_deliveries SET status = 'poison', poison_at = now() WHERE id = 'a'")
    _sql(database_url, "UPDATE alert_unknown_outcomes SET attempt_started_at = attempt_started_at - interval '1 day'")
    today = twilio.accept(to=PHONE, from_=TWILIO_FROM, body=TEXT)  # same text, someone else's message
    assert cli("poison", "replay", "a").code == 0
    replayed = execute_delivery_job("a", "sms", PHONE, *ALERT)
    assert replayed["outcome"] == "delivered" and replayed["message_id"] != today["sid"]
    assert len(twilio.accepted) == 2


@pytest.mark.parametrize(
    ("window_offset_seconds", "taken"),
    [(-10, False), (0, True), (60, True), (90, False)],
    ids=["before-start-less-5s", "at-the-start", "within-send-timeout-plus-60s", "after-the-window"],
)
def test_a_message_of_ours_is_found_only_inside_the_unknown_attempts_window(
    twilio: FakeTwilio, database_url: str, window_offset_seconds: int, taken: bool
) -> None:
    """Window: from the unknown attempt's start less 5 s to its start + ALERT_SEND_TIMEOUT_SECONDS (5) + 60 s.
    The attempt's start is moved instead of Twilio's clock: a message created ``offset`` s after it."""
    twilio.script.append("drop")
    execute_delivery_job("a", "sms", PHONE, *ALERT)
    found = twilio.accept(to=PHONE, from_=TWILIO_FROM, body=TEXT)  # A's own message, say, listed late
    _sql(database_url, "UPDATE alert_unknown_outcomes SET attempt_started_at = now() - make_interval(secs => %s)",
         window_offset_seconds)  # fmt: skip
    _make_due(database_url, "a")
    retry = execute_delivery_job("a", "sms", PHONE, *ALERT, attempt=1)
    assert retry["outcome"] == "delivered"
    assert (retry["message_id"] == found["sid"]) is taken
    assert len(twilio.accepted) == (1 if taken else 2)


def test_two_listed_messages_that_could_be_ours_are_not_found_and_the_sms_is_sent(
    twilio: FakeTwilio, database_url: str
) -> None:
    twilio.script.append("drop")
    execute_delivery_job("a", "sms", PHONE, *ALERT)
    twilio.accept(to=PHONE, from_=TWILIO_FROM, body=TEXT)
    twilio.accept(to=PHONE, from_=TWILIO_FROM, body=TEXT)
    _make_due(database_url, "a")
    retry = execute_delivery_job("a", "sms", PHONE, *ALERT, attempt=1)
    assert retry["outcome"] == "delivered" and len(twilio.accepted) == 3
    assert retry["message_id"] == twilio.accepted[-1]["sid"]


def test_a_match_while_another_delivery_of_that_text_is_in_flight_is_not_taken(
    twilio: FakeTwilio, database_url: str
) -> None:
    """B (same text, same number) is mid-send: its accepted message is not yet recorded as B's, so the one
    listed message cannot be told apart as A's. Not found: A is sent (a duplicate at worst, never a loss)."""
    twilio.script.append("drop")
    execute_delivery_job("a", "sms", PHONE, *ALERT)
    _sql(database_url, "INSERT INTO alert_deliveries (id, channel, recipient, recipient_hash, status, payload) "
         "SELECT 'b', channel, recipient, recipient_hash, 'in_progress', payload FROM alert_deliveries WHERE id = 'a'")
    bs = twilio.accept(to=PHONE, from_=TWILIO_FROM, body=TEXT)  # B's POST accepted, B not yet recorded
    _make_due(database_url, "a")
    retry = execute_delivery_job("a", "sms", PHONE, *ALERT, attempt=1)
    assert retry["outcome"] == "delivered" and retry["message_id"] != bs["sid"]
    assert len(twilio.accepted) == 2


def test_an_accepted_sms_whose_answer_cannot_be_decoded_is_an_unknown_outcome_and_the_retry_finds_it(
    twilio: FakeTwilio, database_url: str
) -> None:
    """Twilio created the message and answered 201, but the body (``Content-Encoding: gzip`` on plain JSON)
    cannot be decoded: the status line came, so the outcome is unknown (§7.1), never "not sent". The retry
    looks the message up and sends nothing."""
    twilio.script.append("broken_gzip")
    first = execute_delivery_job("a", "sms", PHONE, *ALERT)
    assert first["outcome"] == "retry_scheduled"
    assert first["error"] == "outcome_unknown: twilio answer unreadable after sending: ContentDecodingError"
    assert _sql(database_url, "SELECT count(*) FROM alert_unknown_outcomes WHERE delivery_id = 'a'") == [(1,)]
    _make_due(database_url, "a")
    retry = execute_delivery_job("a", "sms", PHONE, *ALERT, attempt=1)
    assert retry["outcome"] == "delivered" and retry["message_id"] == twilio.accepted[0]["sid"]
    assert twilio.posts == 1 and len(twilio.accepted) == 1


def test_a_retry_never_takes_the_message_of_a_delivery_whose_acceptance_is_only_in_its_sent_marker(
    twilio: FakeTwilio, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's POST is dropped (outcome unknown). B, same text, is accepted but its ``delivered`` write fails (a
    Postgres blip): B goes back to pending, its SID only in its sent marker. A's retry lists B's message, held
    by no row: B is still open, so it is not A's. A is sent; B's retry records its own SID (§7.1)."""
    real = DeliveryStore.mark_delivered
    blips = {"b"}

    def blip_once(self: DeliveryStore, delivery_id: str, token: str, **kwargs: Any) -> float:
        if delivery_id in blips:
            blips.discard(delivery_id)
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real(self, delivery_id, token, **kwargs)

    monkeypatch.setattr(DeliveryStore, "mark_delivered", blip_once)
    twilio.script.append("drop")
    execute_delivery_job("a", "sms", PHONE, *ALERT)
    with pytest.raises(psycopg.OperationalError):
        execute_delivery_job("b", "sms", PHONE, *ALERT)
    assert _row(database_url, "b") == ("pending", None)
    _make_due(database_url, "a")
    _make_due(database_url, "b")
    retry_a = execute_delivery_job("a", "sms", PHONE, *ALERT, attempt=1)
    retry_b = execute_delivery_job("b", "sms", PHONE, *ALERT, attempt=1)
    assert len(twilio.accepted) == 2, "A was really sent"
    b_sid, a_sid = (m["sid"] for m in twilio.accepted)
    assert (retry_a["message_id"], retry_b["message_id"]) == (a_sid, b_sid)
    assert (_row(database_url, "a"), _row(database_url, "b")) == (("delivered", a_sid), ("delivered", b_sid))


def _another_delivery(
    database_url: str, status: str, payload: dict[str, str] | None, message_id: str | None, age_seconds: int
) -> None:
    """Delivery 'o' to A's number, in ``status``, created and last moved ``age_seconds`` ago."""
    _sql(database_url, """
        INSERT INTO alert_deliveries (id, channel, recipient, recipient_hash, status, payload, provider_message_id,
                                      created_at, updated_at, delivered_at, poison_at)
        SELECT 'o', channel, recipient, recipient_hash, %s::text, %s::jsonb, %s,
               now() - make_interval(secs => %s), now() - make_interval(secs => %s),
               CASE WHEN %s = 'delivered' THEN now() - make_interval(secs => %s) END,
               CASE WHEN %s = 'poison' THEN now() - make_interval(secs => %s) END
          FROM alert_deliveries WHERE id = 'a'
        """, status, None if payload is None else json.dumps(payload), message_id, age_seconds, age_seconds,
         status, age_seconds, status, age_seconds)  # fmt: skip


SAME = {"recipient": PHONE, "subject": ALERT[0], "body": ALERT[1]}
OTHER_DELIVERIES = [
    ("pending", SAME, None, 0, False),
    ("pending", {"recipient": PHONE, "subject": "", "body": TEXT}, None, 0, False),
    ("in_progress", SAME, None, 0, False),
    ("pending", {"recipient": PHONE, "subject": ALERT[0], "body": "another alert"}, None, 0, True),
    ("poison", SAME, None, 0, False),
    ("delivered", None, None, 0, False),
    ("delivered", None, None, 86_400, True),
    ("delivered", None, "SM-its-own", 0, True),
    ("poison", SAME, None, 86_400, True),
]
OTHER_IDS = [
    "pending-same-text", "pending-same-text-split-otherwise", "in-progress-same-text", "pending-other-text",
    "poisoned-without-id-in-the-window", "delivered-without-id-in-the-window-text-gone",
    "delivered-without-id-a-day-before", "delivered-with-its-own-id", "poisoned-without-id-a-day-before",
]


@pytest.mark.parametrize(("status", "payload", "message_id", "age_seconds", "found"), OTHER_DELIVERIES, ids=OTHER_IDS)
def test_another_delivery_that_may_own_the_match_unrecorded_makes_the_look_up_send_again(
    twilio: FakeTwilio, database_url: str, status: str, payload: dict[str, str] | None, message_id: str | None,
    age_seconds: int, found: bool,
) -> None:
    """One listed message in A's window (A's own, say). Another delivery to the number with the same text as
    sent that is still open, or ended without a provider id during the window (its text unknown once
    delivered), might own it: not found, A is sent again (a duplicate, never a loss). One with another text,
    its own id, or ended before the window, cannot: A takes the match."""
    twilio.script.append("drop")
    execute_delivery_job("a", "sms", PHONE, *ALERT)
    _another_delivery(database_url, status, payload, message_id, age_seconds)
    listed = twilio.accept(to=PHONE, from_=TWILIO_FROM, body=TEXT)
    _make_due(database_url, "a")
    retry = execute_delivery_job("a", "sms", PHONE, *ALERT, attempt=1)
    assert retry["outcome"] == "delivered"
    assert (retry["message_id"] == listed["sid"]) is found
    assert len(twilio.accepted) == (1 if found else 2)


# -- a worker lost mid-send (kill -9, OOM, node loss): its attempt's outcome is unknown (§7.1) -------------
RECLAIM_ENV = {"ALERT_JOB_TIMEOUT_SECONDS": "10", "ALERT_STUCK_AFTER_SECONDS": "20"}


def _claimed_by_a_lost_worker(database_url: str, delivery_id: str, claimant: str | None, age_seconds: int) -> None:
    """Claim the row as ``claimant`` (a process that then vanished), ``age_seconds`` ago."""
    settings = Settings.from_env({**dict(os.environ), **RECLAIM_ENV})
    with open_pool(settings) as pool:
        store = DeliveryStore(pool=pool, stuck_after_seconds=settings.stuck_after_seconds, claimed_by=claimant)
        new = NewDelivery(id=delivery_id, channel="sms", recipient_masked="***4567", recipient_hash="h", payload=None)
        assert store.claim(new) is not None
    _sql(database_url, "UPDATE alert_deliveries SET last_attempt_at = now() - make_interval(secs => %s), "
         "updated_at = now() - make_interval(secs => %s) WHERE id = %s", age_seconds, age_seconds, delivery_id)


def _unknown_since_last_attempt(database_url: str, delivery_id: str) -> list[tuple[Any, ...]]:
    return _sql(database_url, "SELECT u.attempt_started_at = d.last_attempt_at FROM alert_unknown_outcomes u "
                "JOIN alert_deliveries d ON d.id = u.delivery_id WHERE u.delivery_id = %s", delivery_id)


def test_an_sms_whose_worker_died_mid_send_is_looked_up_after_the_dead_worker_reclaim(
    twilio: FakeTwilio, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claimant is gone (no alive key) after Twilio accepted its POST. The sweep's reclaim records an unknown
    outcome from the lost claim's start with ``worker_lost``; the next job finds the message, posts nothing."""
    for key, value in RECLAIM_ENV.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env(dict(os.environ))
    send_alert("sms", PHONE, *ALERT, delivery_id="k", settings=settings)
    _claimed_by_a_lost_worker(database_url, "k", "killed-worker", age_seconds=11)
    sent = twilio.accept(to=PHONE, from_=TWILIO_FROM, body=TEXT)  # the lost attempt's POST reached Twilio

    report = sweep_pass(settings, lock_ttl_seconds=60, release_lock=True)

    assert report is not None and report.requeued == 1
    assert _sql(database_url, "SELECT status, error_message FROM alert_deliveries WHERE id = 'k'") == [
        ("pending", "worker_lost")]
    assert _unknown_since_last_attempt(database_url, "k") == [(True,)]
    retry = execute_delivery_job("k", "sms", PHONE, *ALERT, attempt=1)
    assert retry["outcome"] == "delivered" and retry["message_id"] == sent["sid"]
    assert twilio.posts == 0 and len(twilio.accepted) == 1


def test_an_sms_claim_taking_over_a_stuck_attempt_looks_it_up_first(
    twilio: FakeTwilio, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No claimant recorded, claim older than ALERT_STUCK_AFTER_SECONDS: the job's own claim takes the row over
    and, in the same statement, records the lost attempt's outcome as unknown; the message is found, not resent."""
    for key, value in RECLAIM_ENV.items():
        monkeypatch.setenv(key, value)
    send_alert("sms", PHONE, *ALERT, delivery_id="s", settings=Settings.from_env(dict(os.environ)))
    _claimed_by_a_lost_worker(database_url, "s", None, age_seconds=21)
    sent = twilio.accept(to=PHONE, from_=TWILIO_FROM, body=TEXT)

    retry = execute_delivery_job("s", "sms", PHONE, *ALERT)

    assert retry["outcome"] == "delivered" and retry["message_id"] == sent["sid"]
    assert twilio.posts == 0 and len(twilio.accepted) == 1
    assert _sql(database_url, "SELECT attempts FROM alert_deliveries WHERE id = 's'") == [(1,)]


@pytest.mark.parametrize("channel", ["email", "slack"], ids=["email", "slack"])
def test_a_reclaim_records_an_unknown_outcome_only_for_sms(
    database_url: str, worker_env: dict[str, str], channel: str
) -> None:
    """Only the SMS look-up reads unknown outcomes; other channels' reclaims leave the table alone."""
    settings = Settings.from_env({**worker_env, **RECLAIM_ENV})
    with open_pool(settings) as pool:
        store = DeliveryStore(pool=pool, stuck_after_seconds=settings.stuck_after_seconds, claimed_by=None)
        new = NewDelivery(id="o", channel=channel, recipient_masked="***", recipient_hash="h", payload={"x": 1})
        assert store.claim(new) is not None
        _sql(database_url, "UPDATE alert_deliveries SET last_attempt_at = now() - interval '21 s' WHERE id = 'o'")
        assert store.claim(new) is not None, "the stuck reclaim"
    assert _sql(database_url, "SELECT count(*) FROM alert_unknown_outcomes") == [(0,)]


def test_no_two_rows_can_hold_one_provider_message_id(database_url: str) -> None:
    """The partial unique index: the second ``mark_delivered`` with the same SID is refused, row untouched."""
    pool = open_pool(Settings(database_url=database_url, redis_url=""))
    try:
        store = DeliveryStore(pool=pool)
        token = "00000000-0000-0000-0000-000000000001"
        for delivery_id in ("x", "y"):
            _sql(database_url, "INSERT INTO alert_deliveries (id, channel, recipient, recipient_hash, status, "
                 "claim_token) VALUES (%s, 'sms', '***', 'h', 'in_progress', %s)", delivery_id, token)  # fmt: skip
        store.mark_delivered("x", token, attempts=1, message_id="SM1")
        with pytest.raises(MessageIdTakenError):
            store.mark_delivered("y", token, attempts=1, message_id="SM1")
        assert _row(database_url, "y") == ("in_progress", None)
        store.mark_delivered("y", token, attempts=1, message_id=None)  # nulls never conflict
    finally:
        pool.close()


def test_migrate_adds_the_index_to_a_database_where_two_rows_already_share_an_id(database_url: str) -> None:
    """Idempotent, and the first delivered keeps the SID; the other says whose it is and that it may be unsent."""
    _sql(database_url, "DROP INDEX alert_deliveries_provider_message_id_key")
    _sql(database_url, "INSERT INTO alert_deliveries (id, channel, recipient, recipient_hash, status, "
         "provider_message_id, delivered_at) VALUES ('b', 'sms', '***', 'h', 'delivered', 'SM1', now() - "
         "interval '1 hour'), ('a', 'sms', '***', 'h', 'delivered', 'SM1', now())")  # fmt: skip
    pool = open_pool(Settings(database_url=database_url, redis_url=""))
    try:
        DeliveryStore(pool=pool).migrate()
        DeliveryStore(pool=pool).migrate()
    finally:
        pool.close()
    rows = _sql(database_url, "SELECT id, provider_message_id, error_message FROM alert_deliveries ORDER BY id")
    assert rows == [("a", None, "provider_message_id SM1 is also delivery b's: this delivery may never have been sent"),
                    ("b", "SM1", None)]  # fmt: skip
    assert _sql(database_url, "SELECT 1 FROM pg_indexes WHERE indexname = 'alert_deliveries_provider_message_id_key'")


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str]) -> InProcessCli:
    return InProcessCli(monkeypatch, capsys, env)
