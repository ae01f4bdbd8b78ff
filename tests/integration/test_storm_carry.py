"""Held and carried (docs/contract.md §8) on the real Postgres and Redis, jobs run in process.

E-mail goes to the loopback SMTP sink; Slack and SMS to ``responses``-mocked providers. The per-recipient
window is emptied through the limiter's state (its sorted set), never by waiting.
"""

from __future__ import annotations

import email
import json
import os
import urllib.parse
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import requests
from psycopg_pool import ConnectionPool

from alert_worker.digest import is_held
from alert_worker.entrypoint import execute_delivery_job
from alert_worker.errors import ClaimLostError
from alert_worker.job import job_request, run_delivery_job
from alert_worker.outcomes import text_sha256
from alert_worker.sent_marks import SentMarks
from alert_worker.store import DeliveryStore, NewDelivery
from tests.support.fake_twilio import FakeTwilio, redirected_to, running_fake_twilio
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
        assert digest.startswith("17 alerts\n\ndb-17 disk full\n/var at 97%\nid: slack-carrier\n")
        assert all(f"\nid: {i}\n" in digest + "\n" for i in ids[1:])
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


# -- a message carries only what it shows in full; the rest stay held (§8) -------------------------------
def _held_ids(database_url: str) -> list[str]:
    return sorted(i for i, r in _rows(database_url).items() if is_held(r["status"], r["error"]))


def test_a_slack_message_carries_only_the_alerts_its_blocks_show_in_full_and_the_rest_stay_held(
    providers: MockedProviders, database_url: str, redis_client: redis.Redis
) -> None:
    """49 held alerts, one of them 3,500 characters long: the carrier's Block Kit message shows every alert it
    carries with its subject, delivery id and whole body, within 50 blocks of at most 3,000 characters; the
    alerts that do not fit are not marked delivered, they stay held."""
    long_body = "x" * 3_400 + " the end of the long alert"
    for i in range(50):
        body = long_body if i == 1 else f"body {i}"
        execute_delivery_job(f"s-{i:02d}", "slack", SLACK_URL, f"subj-{i:02d}", body)
    _window_passes(redis_client)
    assert execute_delivery_job("s-carrier", "slack", SLACK_URL, "carrier", "carrier body")["outcome"] == "delivered"
    rows = _rows(database_url)
    carried = sorted(i for i, r in rows.items() if r["via"] == "s-carrier")
    held = _held_ids(database_url)
    assert carried and held, "some alerts ride along, the ones past 50 blocks wait for the next message"
    assert sorted(carried + held) == [f"s-{i:02d}" for i in range(1, 50)]
    assert held == [f"s-{i:02d}" for i in range(50 - len(held), 50)], "oldest first: the newest stay held"
    blocks = json.loads(providers.slack_requests[-1].body or b"{}")["blocks"]
    assert len(blocks) <= 50 and all(len(b["text"]["text"]) <= 3_000 for b in blocks)
    assert blocks[0]["text"]["text"] == f"{len(carried) + 1} alerts"
    shown = "\n".join(b["text"]["text"] for b in blocks[1:])
    for i in carried:
        assert f"subj-{i[2:]}\nid: {i}\n" in shown, f"{i}: subject then id, before the body"
    assert f"body {carried[-1][2:].lstrip('0') or '0'}" in shown
    assert "x" * 3_000 in shown.replace("\n", "") and "the end of the long alert" in shown
    for i in held:
        assert f"id: {i}" not in shown


def test_an_email_carries_only_the_alerts_that_fit_in_full_and_the_rest_stay_held(
    providers: MockedProviders, smtp_sink: SmtpSink, database_url: str, redis_client: redis.Redis
) -> None:
    """Four held alerts of ~400 kB: an e-mail body holds 1,000,000 bytes, so the carrier takes the two oldest,
    each whole; the other two stay held (no section cut, no alert marked delivered that is not in the mail)."""
    execute_delivery_job("e-00", "email", RECIPIENT["email"], "first", "small")
    big = "line of log\n" * 33_000
    for i in (1, 2, 3, 4):
        execute_delivery_job(f"e-{i:02d}", "email", RECIPIENT["email"], f"big-{i}", big)
    _window_passes(redis_client)
    assert execute_delivery_job("e-carrier", "email", RECIPIENT["email"], "carrier", "b")["outcome"] == "delivered"
    rows = _rows(database_url)
    assert [i for i in ("e-01", "e-02", "e-03", "e-04") if rows[i]["via"] == "e-carrier"] == ["e-01", "e-02"]
    assert _held_ids(database_url) == ["e-03", "e-04"]
    mail = email.message_from_bytes(smtp_sink.accepted[-1].content)
    body = mail.get_payload(decode=True).decode()
    assert mail["Subject"] == "[3 alerts] carrier"
    assert body.count("line of log") == 2 * 33_000, "both carried alerts whole"
    assert "Delivery: e-01" in body and "Delivery: e-02" in body and "Delivery: e-03" not in body


def test_a_held_delivery_with_a_sent_marker_is_not_carried_and_ends_delivered_by_its_marker(
    providers: MockedProviders, database_url: str, redis_client: redis.Redis
) -> None:
    """Its provider already accepted it (the marker): carrying it would send it twice. It goes back pending,
    not held, and its own job ends it delivered with the marker's id, with no request."""
    ids = _storm("sms", 3)
    SentMarks(client=redis_client).record(ids[1], "SM" + "5" * 32, log=_NoLog())
    _window_passes(redis_client)
    assert execute_delivery_job("carrier", "sms", RECIPIENT["sms"], "s", "b")["outcome"] == "delivered"
    rows = _rows(database_url)
    assert rows[ids[2]]["via"] == "carrier"
    assert (rows[ids[1]]["status"], rows[ids[1]]["via"]) == ("pending", None)
    assert "db-1 disk full" not in _received("sms", providers, SmtpSink())[-1]
    sent = len(providers.twilio_requests)
    assert execute_delivery_job(ids[1], "sms", RECIPIENT["sms"], "x", "y")["outcome"] == "delivered"
    assert _rows(database_url)[ids[1]]["mid"] == "SM" + "5" * 32
    assert len(providers.twilio_requests) == sent


# -- an unknown outcome: the carried ones are due on their own, not held (§8, §7.1) ----------------------------
@pytest.fixture
def twilio(monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str]) -> Iterator[FakeTwilio]:
    """Twilio on a loopback socket (real look-ups), limit 1 SMS an hour per recipient."""
    env = {**worker_env, **channel_env(slack_default=SLACK_URL, twilio_token="t" * 32)}
    for key, value in {**env, LIMIT_ENV["sms"]: "1"}.items():
        monkeypatch.setenv(key, value)
    with running_fake_twilio() as fake, redirected_to(fake.base_url):
        yield fake


def _make_due(database_url: str, delivery_id: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE alert_deliveries SET next_attempt_at = now() WHERE id = %s", (delivery_id,))


def _times_sent(fake: FakeTwilio, subject: str) -> int:
    return sum(m["body"].startswith(f"{subject}:") or f"\n- {subject}" in m["body"] for m in fake.accepted)


def _unknown_outcome(database_url: str, delivery_id: str) -> tuple[str | None, str | None] | None:
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT sent_sha256, carried_by FROM alert_unknown_outcomes WHERE delivery_id = %s", (delivery_id,)
        ).fetchone()
    return None if found is None else (found[0], found[1])


def _no_row_in_progress_and_none_delivered_unsent(
    database_url: str, fake: FakeTwilio, subjects: dict[str, str]
) -> None:
    """Nothing is left claimed, and each delivered row's alert is in a message Twilio accepted (no loss)."""
    rows = _rows(database_url)
    assert [i for i, r in rows.items() if r["status"] == "in_progress"] == []
    for delivery_id, subject in subjects.items():
        assert rows[delivery_id]["status"] == "delivered", delivery_id
        assert _times_sent(fake, subject) >= 1, f"{delivery_id} delivered but never accepted by Twilio"


def _carrying_sms_with_unknown_outcome(
    fake: FakeTwilio, database_url: str, redis_client: redis.Redis, behaviour: str
) -> None:
    """h0 goes alone, h1-h3 are held; c carries them and its answer is lost (``behaviour``)."""
    for i in range(4):
        execute_delivery_job(f"h{i}", "sms", RECIPIENT["sms"], f"alert {i}", "x")
    _window_passes(redis_client)
    fake.script.append(behaviour)
    assert execute_delivery_job("c", "sms", RECIPIENT["sms"], "carrier", "x")["outcome"] == "retry_scheduled"


@pytest.mark.parametrize("carried_first", [True, False], ids=["carried-jobs-first", "carrier-retry-first"])
def test_carried_alerts_of_an_sms_digest_twilio_has_end_delivered_via_their_carrier_without_a_resend(
    carried_first: bool, twilio: FakeTwilio, database_url: str, redis_client: redis.Redis, store: DeliveryStore
) -> None:
    """The carrier's answer is lost but Twilio has the digest. Its carried alerts go back pending, due and not
    held (the next SMS to the number does not carry them), each with its own unknown outcome naming the
    carrier and the digest's SHA-256. Their own jobs and the carrier's retry, in either order, look the digest
    up: all end delivered by that one message (carried ones ``delivered_via`` the carrier, no id of their
    own); nothing is sent again."""
    _carrying_sms_with_unknown_outcome(twilio, database_url, redis_client, "broken_gzip")
    digest = next(m for m in twilio.accepted if m["body"].startswith("4 alerts:"))
    rows = _rows(database_url)
    for carried in ("h1", "h2", "h3"):
        assert (rows[carried]["status"], rows[carried]["error"]) == ("pending", "outcome_unknown: carried by c")
        assert not is_held(rows[carried]["status"], rows[carried]["error"])
        assert _unknown_outcome(database_url, carried) == (text_sha256(digest["body"]), "c")
    assert {"h1", "h2", "h3"} <= {r.id for r in store.take_overdue(grace_seconds=0)}, "the sweep enqueues them"
    _window_passes(redis_client)
    assert execute_delivery_job("n", "sms", RECIPIENT["sms"], "next alert", "x")["outcome"] == "delivered"
    assert [i for i, r in _rows(database_url).items() if r["via"] == "n"] == []

    def carrier_retry() -> None:
        _make_due(database_url, "c")
        _window_passes(redis_client)
        assert execute_delivery_job("c", "sms", RECIPIENT["sms"], "carrier", "x", attempt=1)["outcome"] == "delivered"

    if not carried_first:
        carrier_retry()
    for i in (1, 2, 3):
        _make_due(database_url, f"h{i}")
        assert execute_delivery_job(f"h{i}", "sms", RECIPIENT["sms"], f"alert {i}", "x")["outcome"] == "delivered"
    if carried_first:
        carrier_retry()
    rows = _rows(database_url)
    assert [(rows[i]["status"], rows[i]["via"], rows[i]["mid"]) for i in ("h1", "h2", "h3")] == [
        ("delivered", "c", None)
    ] * 3
    assert rows["c"]["mid"] == digest["sid"]
    assert [m for m in twilio.accepted if m["body"].startswith("4 alerts:")] == [digest]
    assert [_times_sent(twilio, f"alert {i}") for i in range(4)] == [1, 1, 1, 1]
    assert _times_sent(twilio, "carrier") == 1 and twilio.posts == 3  # h0, the digest, n


def test_carried_alerts_of_an_sms_digest_twilio_never_got_are_each_sent_again(
    twilio: FakeTwilio, database_url: str, redis_client: redis.Redis
) -> None:
    """The digest never reached Twilio: the carrier's retry and each carried alert's own job find nothing and
    send again, each alone. Nothing is lost."""
    _carrying_sms_with_unknown_outcome(twilio, database_url, redis_client, "drop")
    _make_due(database_url, "c")
    _window_passes(redis_client)
    assert execute_delivery_job("c", "sms", RECIPIENT["sms"], "carrier", "x", attempt=1)["outcome"] == "delivered"
    for i in (1, 2, 3):
        _make_due(database_url, f"h{i}")
        _window_passes(redis_client)
        assert execute_delivery_job(f"h{i}", "sms", RECIPIENT["sms"], f"alert {i}", "x")["outcome"] == "delivered"
    rows = _rows(database_url)
    assert [(rows[i]["via"], rows[i]["mid"] is not None) for i in ("h1", "h2", "h3")] == [(None, True)] * 3
    assert [_times_sent(twilio, f"alert {i}") for i in range(4)] == [1, 1, 1, 1]
    _no_row_in_progress_and_none_delivered_unsent(
        database_url, twilio, {"c": "carrier", **{f"h{i}": f"alert {i}" for i in range(4)}}
    )


def test_a_released_digest_with_an_unknown_outcome_then_a_lone_resend_of_its_carrier_loses_nothing(
    monkeypatch: pytest.MonkeyPatch, twilio: FakeTwilio, database_url: str, redis_client: redis.Redis
) -> None:
    """Review r01: ALERT_DIGEST=off; ``release`` makes h1 carry h2 and that SMS never reaches Twilio. h1's
    retry resends it alone (accepted, answer lost), its next retry finds that message. h2 is not ended by h1's
    lone message: its own job finds no digest and sends it."""
    monkeypatch.setenv("ALERT_DIGEST", "off")
    for i in range(3):
        execute_delivery_job(f"h{i}", "sms", RECIPIENT["sms"], f"alert {i}", "x")
    _make_due(database_url, "h1")
    settings, request = job_request("h1", "sms", RECIPIENT["sms"], "alert 1", "x", 0)
    twilio.script.append("drop")
    assert run_delivery_job(replace(request, release=True), settings=settings)["outcome"] == "retry_scheduled"
    assert _rows(database_url)["h2"]["error"] == "outcome_unknown: carried by h1"
    for attempt, behaviour in ((1, "broken_gzip"), (2, None)):
        _make_due(database_url, "h1")
        _window_passes(redis_client)
        if behaviour:
            twilio.script.append(behaviour)
        execute_delivery_job("h1", "sms", RECIPIENT["sms"], "alert 1", "x", attempt=attempt)
    assert _rows(database_url)["h1"]["status"] == "delivered"
    assert _rows(database_url)["h2"]["status"] == "pending"
    _make_due(database_url, "h2")
    _window_passes(redis_client)
    assert execute_delivery_job("h2", "sms", RECIPIENT["sms"], "alert 2", "x")["outcome"] == "delivered"
    assert _rows(database_url)["h2"]["via"] is None
    _no_row_in_progress_and_none_delivered_unsent(
        database_url, twilio, {"h0": "alert 0", "h1": "alert 1", "h2": "alert 2"}
    )


def test_carried_alerts_of_a_carrier_poisoned_after_an_unknown_outcome_are_sent_by_their_own_jobs(
    monkeypatch: pytest.MonkeyPatch, twilio: FakeTwilio, database_url: str, redis_client: redis.Redis
) -> None:
    """Review r02: ALERT_MAX_ATTEMPTS=1; the carrier's digest never reaches Twilio and the carrier is poisoned
    (attempts exhausted). Its carried alerts do not hang in progress: their own jobs find no digest and send
    each alone."""
    monkeypatch.setenv("ALERT_MAX_ATTEMPTS", "1")
    for i in range(3):
        execute_delivery_job(f"h{i}", "sms", RECIPIENT["sms"], f"alert {i}", "x")
    _window_passes(redis_client)
    twilio.script.append("drop")
    assert execute_delivery_job("c", "sms", RECIPIENT["sms"], "carrier", "x")["outcome"] == "poisoned"
    rows = _rows(database_url)
    assert [(rows[i]["status"], rows[i]["error"]) for i in ("h1", "h2")] == [
        ("pending", "outcome_unknown: carried by c")
    ] * 2
    for i in (1, 2):
        _make_due(database_url, f"h{i}")
        _window_passes(redis_client)
        assert execute_delivery_job(f"h{i}", "sms", RECIPIENT["sms"], f"alert {i}", "x")["outcome"] == "delivered"
    _no_row_in_progress_and_none_delivered_unsent(
        database_url, twilio, {"h0": "alert 0", "h1": "alert 1", "h2": "alert 2"}
    )


def test_the_alerts_of_a_carrying_slack_message_with_an_unknown_outcome_are_resent_alone_not_carried_again(
    providers: MockedProviders, database_url: str, redis_client: redis.Redis
) -> None:
    """Slack's answer is lost (read timeout): the carried alerts go back pending, not held (the next message to
    the channel does not carry them); the carrier is resent (§6.2) and each carried alert's own job resends it.
    A duplicate, never a loss."""
    ids = _storm("slack", 3)
    _window_passes(redis_client)
    providers.slack_replies.append(requests.ReadTimeout("no answer"))
    assert execute_delivery_job("c", "slack", SLACK_URL, "carrier", "x")["outcome"] == "retry_scheduled"
    rows = _rows(database_url)
    assert [(rows[i]["status"], rows[i]["error"]) for i in ids[1:]] == [
        ("pending", "outcome_unknown: carried by c")
    ] * 2
    _window_passes(redis_client)
    assert execute_delivery_job("n", "slack", SLACK_URL, "next alert", "x")["outcome"] == "delivered"
    assert "slack-storm" not in json.loads(providers.slack_requests[-1].body or b"{}")["text"]
    _make_due(database_url, "c")
    _window_passes(redis_client)
    assert execute_delivery_job("c", "slack", SLACK_URL, "carrier", "x", attempt=1)["outcome"] == "delivered"
    for i in ids[1:]:
        _make_due(database_url, i)
        _window_passes(redis_client)
        assert execute_delivery_job(i, "slack", SLACK_URL, "s", "b")["outcome"] == "delivered"
    rows = _rows(database_url)
    assert [(rows[i]["status"], rows[i]["via"]) for i in ids[1:]] == [("delivered", None)] * 2
    texts = [json.loads(r.body or b"{}")["text"] for r in providers.slack_requests]
    listed = [sum(f"\nid: {i}\n" in t + "\n" for t in texts) for i in ids[1:]]
    assert listed == [1, 1], "only the lost digest lists them"
    assert [sum(f"db-{n} disk full" in t for t in texts) for n in (1, 2)] == [2, 2], "the lost digest, then alone"


def test_a_held_sms_with_an_unknown_outcome_of_its_own_is_not_carried_and_its_own_job_finds_it(
    twilio: FakeTwilio, database_url: str, redis_client: redis.Redis
) -> None:
    """x's send had an unknown outcome and its retry met a cooldown (held): the next SMS to the number does not
    carry it; x's own retry looks Twilio up and finds its first message. x's text reaches the phone once."""
    twilio.script.append("broken_gzip")
    assert execute_delivery_job("x", "sms", RECIPIENT["sms"], "DB down", "db-1")["outcome"] == "retry_scheduled"
    with psycopg.connect(database_url, autocommit=True) as conn:  # what a cooldown deferral leaves
        conn.execute(
            "UPDATE alert_deliveries SET error_message = 'rate_limited: cooldown, the sms provider asked to slow "
            "down (60s left)', next_attempt_at = now() + interval '1 minute' WHERE id = 'x'"
        )
    _window_passes(redis_client)
    assert execute_delivery_job("y", "sms", RECIPIENT["sms"], "disk full", "db-2")["outcome"] == "delivered"
    assert _rows(database_url)["x"]["via"] is None
    _make_due(database_url, "x")
    assert execute_delivery_job("x", "sms", RECIPIENT["sms"], "DB down", "db-1", attempt=1)["outcome"] == "delivered"
    assert _rows(database_url)["x"]["mid"] == twilio.accepted[0]["sid"]
    assert sum("DB down" in m["body"] for m in twilio.accepted) == 1


def test_claim_held_leaves_a_held_row_with_an_unknown_outcome_to_its_own_job(
    store: DeliveryStore, database_url: str
) -> None:
    for i in range(2):
        _held_row(store, database_url, f"held-{i}")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO alert_unknown_outcomes (delivery_id, channel, attempt_started_at) "
            "VALUES ('held-0', 'sms', now())"
        )
    carrier, _ = _carrier(store)
    assert [c.row.id for c in store.claim_held(channel="sms", recipient_hash="h1", exclude_id=carrier, limit=10)] == [
        "held-1"
    ]


def test_carried_rows_of_an_unknown_outcome_go_back_due_fenced_with_their_carrier_until_an_own_attempt_is_lost(
    store: DeliveryStore, database_url: str
) -> None:
    """One fenced write: pending, due now, not held, each with an unknown outcome naming the carrier and the
    digest's SHA-256; a stale claim writes nothing. A later attempt of its own that is lost (stuck reclaim)
    replaces that: its look-up then matches its own text."""
    _held_row(store, database_url, "held-0")
    carrier, _ = _carrier(store)
    claims = store.claim_held(channel="sms", recipient_hash="h1", exclude_id=carrier, limit=5)
    written = store.carried_outcome_unknown(claims, carrier_id=carrier, started_at=None, sent_sha256="ab" * 32)
    assert written == ["held-0"]
    assert store.carried_outcome_unknown(claims, carrier_id=carrier, started_at=None, sent_sha256="cd" * 32) == []
    with psycopg.connect(database_url) as conn:
        due = conn.execute("SELECT next_attempt_at <= now() FROM alert_deliveries WHERE id = 'held-0'").fetchone()
    row = _rows(database_url)["held-0"]
    assert (row["status"], row["error"], due) == ("pending", "outcome_unknown: carried by carrier", (True,))
    assert _unknown_outcome(database_url, "held-0") == ("ab" * 32, carrier)
    assert store.claim_held(channel="sms", recipient_hash="h1", exclude_id="other", limit=5) == []
    own = NewDelivery(
        id="held-0", channel="sms", recipient_masked="***0000", recipient_hash="h1", payload={"recipient": "x"}
    )
    assert store.claim(own) is not None
    assert _unknown_outcome(database_url, "held-0") == ("ab" * 32, carrier), "a claim of a pending row keeps it"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE alert_deliveries SET last_attempt_at = now() + interval '1 s' - interval '1 day'")
        conn.execute("UPDATE alert_unknown_outcomes SET attempt_started_at = now() - interval '2 days'")
    assert store.claim(own) is not None
    assert _unknown_outcome(database_url, "held-0") == (None, None)
