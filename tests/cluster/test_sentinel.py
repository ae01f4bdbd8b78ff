"""Redis through Sentinel: clients find and follow the primary; a lossy failover loses no delivery.

The set is real (``redis-server --sentinel``, Redis 7.0.15): a primary, a replica and three sentinels.
"Replica missing recent writes" is made by detaching the replica (``REPLICAOF NO ONE``) just before the
writes and killing the primary right after: asynchronous replication's worst case, every write since
the last sync gone, while Sentinel still promotes that replica.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
import redis
from rq import Queue

from alert_worker.connect import redis_client
from alert_worker.entrypoint import execute_delivery_job
from alert_worker.producer import send_alert
from alert_worker.rate_limit import RateLimiter
from alert_worker.settings import RateLimit, Settings
from tests.cluster.fleet import SupervisedWorker
from tests.cluster.sentinel import MASTER, SentinelSet
from tests.support.cli import run_cli
from tests.support.processes import wait_until
from tests.support.smtp import SmtpSink

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


@pytest.fixture
def sentinel_env(sentinel_set: SentinelSet, worker_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The worker environment with Redis reached only through the sentinels; the primary is flushed."""
    sentinel_set.wait_in_sync()
    client = sentinel_set.client(sentinel_set.primary_port())
    client.flushall()
    yield {
        **worker_env,
        "REDIS_URL": "redis://sentinel-managed/0",  # host unused: the primary comes from Sentinel
        "REDIS_SENTINELS": sentinel_set.sentinels,
        "REDIS_SENTINEL_MASTER": MASTER,
    }
    for port in sentinel_set.data_ports:  # a lossy test leaves a detached replica: re-attach it
        if port != sentinel_set.primary_port():
            sentinel_set.client(port).replicaof(sentinel_set.bind, sentinel_set.primary_port())


def _lose_recent_writes_then_fail_over(sentinel_set: SentinelSet, write: object = None) -> int:
    """Detach the replica, let ``write`` run on the primary only, kill the primary; return the new primary."""
    sentinel_set.ready_for_failover()
    old, replica = sentinel_set.primary_port(), sentinel_set.replica_port()
    sentinel_set.client(replica).replicaof("NO", "ONE")
    if callable(write):
        write()
    sentinel_set.processes[old].kill()
    sentinel_set.processes[old].wait(timeout=10)

    def promoted() -> bool:
        return sentinel_set.primary_port() == replica

    sentinel_set.wait_for(promoted, timeout=30, what="sentinel promotes the replica")
    sentinel_set.restart_as_replica(old)
    return replica


def test_the_packages_client_writes_to_the_primary_sentinel_names(
    sentinel_set: SentinelSet, sentinel_env: dict[str, str]
) -> None:
    """REDIS_SENTINELS + REDIS_SENTINEL_MASTER: the client's writes land on the current primary."""
    client = redis_client(Settings.from_env(sentinel_env))
    client.set("probe", "1")
    assert sentinel_set.client(sentinel_set.primary_port()).get("probe") == b"1"
    client.close()


def test_a_long_lived_client_follows_a_failover(sentinel_set: SentinelSet, sentinel_env: dict[str, str]) -> None:
    """A client made before a failover writes to the new primary after it (a worker's own connection)."""
    client = redis_client(Settings.from_env(sentinel_env))
    client.set("before", "1")
    new = sentinel_set.failover()
    wait_until(lambda: _writes(client), timeout=20, what="a write after the failover")
    assert sentinel_set.client(new).get("after") == b"1"
    client.close()


def _writes(client: redis.Redis) -> bool:
    try:
        return bool(client.set("after", "1"))
    except redis.RedisError:
        return False


LIMIT = RateLimit("channel", 5, 60)


def _allowed(limiter: RateLimiter, tries: int, channel: str = "email") -> int:
    return sum(limiter.acquire(channel, "h", [LIMIT]).allowed for _ in range(tries))


def test_a_rate_limit_holds_across_a_failover_with_the_replica_in_sync(
    sentinel_set: SentinelSet, sentinel_env: dict[str, str]
) -> None:
    """SENTINEL FAILOVER waits for the replica: the window's sends survive, no extra send is allowed."""
    client = redis_client(Settings.from_env(sentinel_env))
    limiter = RateLimiter(client=client)
    assert _allowed(limiter, 8) == LIMIT.limit
    acknowledged = client.execute_command("WAIT", 1, 2000)  # type: ignore[no-untyped-call]
    assert acknowledged == 1, "the replica acknowledged the window's sends"
    sentinel_set.failover()
    wait_until(lambda: _ping(limiter), timeout=20, what="limiter on the new primary")
    assert _allowed(limiter, 3) == 0


def _ping(limiter: RateLimiter) -> bool:
    try:
        limiter.acquire("probe", "p", [RateLimit("channel", 1000, 1)])
        return True
    except Exception:
        return False


def test_a_failover_that_loses_writes_allows_at_most_one_more_limit_in_the_window(
    sentinel_set: SentinelSet, sentinel_env: dict[str, str]
) -> None:
    """The exact bound: sends the lost primary recorded (at most one limit) are allowed again, no more."""
    limiter = RateLimiter(client=redis_client(Settings.from_env(sentinel_env)))
    counted: list[int] = []
    _lose_recent_writes_then_fail_over(sentinel_set, lambda: counted.append(_allowed(limiter, 8, "lossy")))
    wait_until(lambda: _ping(limiter), timeout=20, what="limiter on the new primary")
    assert counted == [LIMIT.limit]
    assert _allowed(limiter, 8, "lossy") == LIMIT.limit, "the new primary starts the window empty: one more limit"
    assert _allowed(limiter, 3, "lossy") == 0


def _statuses(database_url: str) -> dict[str, str]:
    with psycopg.connect(database_url, prepare_threshold=None) as conn:
        return {str(i): str(s) for i, s in conn.execute("SELECT id, status FROM alert_deliveries").fetchall()}


def test_a_lossy_failover_mid_burst_loses_no_delivery(
    sentinel_set: SentinelSet, sentinel_env: dict[str, str], smtp_sink: SmtpSink, database_url: str
) -> None:
    """Jobs only the dead primary held are re-enqueued by the sweep from Postgres; each sent once.

    The worker, busy when its primary dies, exits (RQ) and is restarted as a supervisor would.
    """
    env = {
        **sentinel_env,
        "ALERT_SWEEP_GRACE_SECONDS": "1",
        "ALERT_SWEEP_INTERVAL_SECONDS": "1",
        "ALERT_RATE_EMAIL_PER_RECIPIENT_HOUR": "0",
    }
    settings = Settings.from_env(env)
    ids = [f"fo-{n}" for n in range(24)]
    worker = SupervisedWorker(["run"], env, name="sentinel")
    worker.start()
    try:
        queue = Queue("alerts", connection=redis_client(settings))
        queue.enqueue_in(
            timedelta(seconds=1), execute_delivery_job, "scheduled-0", "email", "ops@example.com", "s", "b"
        )
        for delivery_id in ids[:12]:
            send_alert("email", "ops@example.com", "Disk full", "b", delivery_id=delivery_id, settings=settings)
        wait_until(lambda: len(smtp_sink.accepted) >= 4, timeout=60, what=f"first sends\n{worker.tail()}")
        # The scheduler, a child forked with the worker's Sentinel-managed connection, runs a delayed job.
        wait_until(lambda: _statuses(database_url).get("scheduled-0") == "delivered", timeout=30, what="scheduled-0")

        def burst() -> None:
            for delivery_id in ids[12:]:
                send_alert("email", "ops@example.com", "Disk full", "b", delivery_id=delivery_id, settings=settings)

        _lose_recent_writes_then_fail_over(sentinel_set, burst)
        wait_until(
            lambda: not worker.poll() and set(_statuses(database_url).values()) == {"delivered"},
            timeout=90,
            what=f"every delivery delivered\n{worker.tail()}",
        )
    finally:
        worker.close()
    sent = collections.Counter(message.message["Message-ID"] for message in smtp_sink.accepted)
    assert len(sent) == len(ids) + 1  # and scheduled-0
    assert max(sent.values()) == 1, "no delivery was sent twice"


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"REDIS_SENTINELS": "127.0.0.1:26379"}, "REDIS_SENTINEL_MASTER"),
        ({"ALERT_DB_POOLER": "odyssey"}, "ALERT_DB_POOLER"),
    ],
    ids=["sentinels-without-master", "unknown-pooler"],
)
def test_the_worker_refuses_a_bad_cluster_setting_at_start_up(
    worker_env: dict[str, str], override: dict[str, str], named: str
) -> None:
    """``alert-worker run`` exits 1 with one configuration_invalid line naming the variable."""
    done = run_cli(["run"], {**worker_env, **override}, timeout=60)
    assert done.returncode == 1
    events = [json.loads(line) for line in done.stdout.splitlines() + done.stderr.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == ["configuration_invalid"]
    assert named in json.dumps(events[0])
