"""Dead-worker reclaim on the real servers: a row whose claimant is gone comes back after the job timeout."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import redis
from rq import Queue

from alert_worker.errors import ClaimLostError
from alert_worker.liveness import Liveness, Registration
from alert_worker.producer import send_alert
from alert_worker.resources import open_pool
from alert_worker.settings import Settings
from alert_worker.store import DeliveryStore, NewDelivery
from alert_worker.worker import sweep_pass

pytestmark = pytest.mark.integration

JOB_TIMEOUT = 5


@pytest.fixture
def settings(worker_env: dict[str, str]) -> Settings:
    return Settings.from_env(
        {**worker_env, "ALERT_SWEEP_GRACE_SECONDS": "600", "ALERT_JOB_TIMEOUT_SECONDS": str(JOB_TIMEOUT),
         "ALERT_SEND_TIMEOUT_SECONDS": str(JOB_TIMEOUT - 1)}
    )


@pytest.fixture
def claim_as(settings: Settings, database_url: str) -> Iterator[object]:
    """Claim a sent delivery as a named worker; returns the claim token."""
    pool = open_pool(settings)

    def claim(delivery_id: str, worker: str | None) -> str:
        store = DeliveryStore(pool=pool, stuck_after_seconds=settings.stuck_after_seconds, claimed_by=worker)
        won = store.claim(
            NewDelivery(id=delivery_id, channel="email", recipient_masked="o***", recipient_hash="h", payload=None)
        )
        assert won is not None
        return won.token

    yield claim
    pool.close()


def _sql(database_url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def _age_claim(database_url: str, delivery_id: str, seconds: int) -> None:
    _sql(
        database_url,
        "UPDATE alert_deliveries SET last_attempt_at = now() - make_interval(secs => %s), "
        "updated_at = now() - make_interval(secs => %s) WHERE id = %s",
        seconds,
        seconds,
        delivery_id,
    )


def _row(database_url: str, delivery_id: str) -> tuple[object, ...]:
    return _sql(
        database_url,
        "SELECT status, attempts, claim_token IS NULL, claimed_by FROM alert_deliveries WHERE id = %s",
        delivery_id,
    )[0]


def _registered_dead(client: redis.Redis, settings: Settings, name: str) -> None:
    """A registration whose alive key has lapsed (what a kill -9 leaves behind)."""
    reg = Registration(client=client, prefix=settings.redis_key_prefix, name=name, threads=8, in_flight=lambda: 1)
    reg.beat()
    client.delete(reg.keys.alive)


def test_the_claim_records_the_claiming_workers_name(settings: Settings, database_url: str, claim_as: object) -> None:
    """Every claim writes ``claimed_by``."""
    send_alert("email", "ops@example.com", "s", "b", delivery_id="c-1", settings=settings)
    claim_as("c-1", "worker-a")  # type: ignore[operator]
    assert _row(database_url, "c-1") == ("in_progress", 0, False, "worker-a")


@pytest.mark.parametrize(
    ("alive_state", "reclaimed"),
    [
        ("registered, alive key lapsed", True),
        ("registered and alive", False),
        ("unregistered, rq worker key present", False),
        ("unregistered, no rq worker key", True),
    ],
    ids=["registered-dead", "registered-alive", "plain-rq-alive", "plain-rq-dead"],
)
def test_a_row_of_a_dead_claimant_is_reclaimed_after_the_job_timeout_counting_the_attempt(
    settings: Settings,
    database_url: str,
    redis_client: redis.Redis,
    claim_as: object,
    alive_state: str,
    reclaimed: bool,
) -> None:
    """Claim older than the job timeout, claimant not alive: back to pending, attempt counted, re-enqueued."""
    send_alert("email", "ops@example.com", "s", "b", delivery_id="d-1", settings=settings)
    Queue("alerts", connection=redis_client).empty()
    claim_as("d-1", "w1")  # type: ignore[operator]
    prefix = settings.redis_key_prefix
    if alive_state.startswith("registered, alive key lapsed"):
        _registered_dead(redis_client, settings, "w1")
    elif alive_state == "registered and alive":
        Registration(client=redis_client, prefix=prefix, name="w1", threads=8, in_flight=lambda: 1).beat()
    elif alive_state == "unregistered, rq worker key present":
        redis_client.hset("rq:worker:w1", "state", "busy")
    _age_claim(database_url, "d-1", JOB_TIMEOUT + 1)

    report = sweep_pass(settings, lock_ttl_seconds=60, release_lock=True)

    assert report is not None and report.requeued == int(reclaimed)
    if reclaimed:
        assert _row(database_url, "d-1") == ("pending", 1, True, "w1")
        assert Queue("alerts", connection=redis_client).count == 1
    else:
        assert _row(database_url, "d-1") == ("in_progress", 0, False, "w1")


def test_a_dead_claimants_row_is_left_alone_until_its_claim_is_older_than_the_job_timeout(
    settings: Settings, database_url: str, redis_client: redis.Redis, claim_as: object
) -> None:
    """A fresh claim of a dead worker may still be running elsewhere in time: wait for the job timeout."""
    send_alert("email", "ops@example.com", "s", "b", delivery_id="d-2", settings=settings)
    claim_as("d-2", "gone")  # type: ignore[operator]
    _registered_dead(redis_client, settings, "gone")
    _age_claim(database_url, "d-2", JOB_TIMEOUT - 3)
    report = sweep_pass(settings, lock_ttl_seconds=60, release_lock=True)
    assert report is not None and report.requeued == 0
    assert _row(database_url, "d-2")[0] == "in_progress"


def test_a_row_without_claimed_by_keeps_the_stuck_threshold(
    settings: Settings, database_url: str, claim_as: object
) -> None:
    """No claimant recorded (a claim from before the column): only ALERT_STUCK_AFTER_SECONDS reclaims it."""
    send_alert("email", "ops@example.com", "s", "b", delivery_id="d-3", settings=settings)
    claim_as("d-3", None)  # type: ignore[operator]
    _age_claim(database_url, "d-3", JOB_TIMEOUT + 1)
    assert (report := sweep_pass(settings, lock_ttl_seconds=60, release_lock=True)) and report.requeued == 0
    _age_claim(database_url, "d-3", settings.stuck_after_seconds + 1)
    assert (report := sweep_pass(settings, lock_ttl_seconds=60, release_lock=True)) and report.requeued == 1


def test_a_stuck_row_without_claimed_by_next_to_a_dead_claimant_stops_neither_reclaim(
    settings: Settings, database_url: str, redis_client: redis.Redis, claim_as: object
) -> None:
    """``claimed_by = ANY(dead)`` is NULL for a row with no claimant; it must count as "not dead", never
    turn ``attempts`` into NULL and fail the whole pass (a not-null violation every interval)."""
    send_alert("email", "ops@example.com", "s", "b", delivery_id="n-old", settings=settings)
    send_alert("email", "ops@example.com", "s", "b", delivery_id="n-dead", settings=settings)
    Queue("alerts", connection=redis_client).empty()
    claim_as("n-old", None)  # type: ignore[operator]  # a direct execute_delivery_job, or a pre-column claim
    claim_as("n-dead", "gone")  # type: ignore[operator]
    _registered_dead(redis_client, settings, "gone")
    _age_claim(database_url, "n-old", settings.stuck_after_seconds + 1)
    _age_claim(database_url, "n-dead", JOB_TIMEOUT + 1)

    report = sweep_pass(settings, lock_ttl_seconds=60, release_lock=True)

    assert report is not None and report.requeued == 2
    assert _row(database_url, "n-old") == ("in_progress", 0, False, None)  # re-enqueued; its job's claim counts it
    assert _row(database_url, "n-dead") == ("pending", 1, True, "gone")
    assert Queue("alerts", connection=redis_client).count == 2


def test_the_old_claimer_can_write_nothing_after_a_dead_worker_reclaim(
    settings: Settings, database_url: str, redis_client: redis.Redis, claim_as: object
) -> None:
    """The reclaim clears the claim token: a claimer that was only slow, not dead, gets ClaimLostError."""
    send_alert("email", "ops@example.com", "s", "b", delivery_id="d-4", settings=settings)
    token = claim_as("d-4", "slow")  # type: ignore[operator]
    _registered_dead(redis_client, settings, "slow")
    _age_claim(database_url, "d-4", JOB_TIMEOUT + 1)
    assert (report := sweep_pass(settings, lock_ttl_seconds=60, release_lock=True)) and report.requeued == 1
    with open_pool(settings) as pool, pytest.raises(ClaimLostError):
        DeliveryStore(pool=pool).mark_delivered("d-4", token, attempts=1, message_id=None)


def test_liveness_reads_the_keys_the_registration_writes(settings: Settings, redis_client: redis.Redis) -> None:
    """Registration and Liveness agree on the key names, on the real server."""
    reg = Registration(client=redis_client, prefix=settings.redis_key_prefix, name="w9", threads=4, in_flight=lambda: 2)
    liveness = Liveness(client=redis_client, prefix=settings.redis_key_prefix)
    reg.start()
    try:
        assert liveness.is_alive("w9")
        assert redis_client.hgetall(reg.keys.registration)[b"in_flight"] == b"2"
    finally:
        reg.close()
    assert not redis_client.exists(reg.keys.registration, reg.keys.alive)


def test_a_grace_period_longer_than_the_stuck_threshold_never_delays_a_rows_first_reclaim(
    worker_env: dict[str, str], database_url: str, claim_as: object
) -> None:
    """Grace 600 s, stuck 300 s: a claim stuck for 301 s is taken by the first sweep that sees it."""
    settings = Settings.from_env({**worker_env, "ALERT_SWEEP_GRACE_SECONDS": "600", "ALERT_STUCK_AFTER_SECONDS": "300"})
    send_alert("email", "ops@example.com", "s", "b", delivery_id="d-5", settings=settings)
    claim_as("d-5", None)  # type: ignore[operator]
    _age_claim(database_url, "d-5", 301)
    assert (report := sweep_pass(settings, lock_ttl_seconds=60, release_lock=True)) and report.requeued == 1
