"""Redis-kept metrics: written by jobs (any process), rendered as Prometheus text by the parent."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import psycopg
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from alert_worker.metrics import RedisMetrics, bucket_for
from alert_worker.metrics_server import AlertCollector, MetricsServer, collector_for, database_probe, render
from alert_worker.settings import Settings
from tests.support.smtp import free_port

pytestmark = pytest.mark.integration


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse exposition text into {(sample name, sorted labels): value}."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def collector(redis_url: str) -> AlertCollector:
    return AlertCollector(client_factory=lambda: redis.Redis.from_url(redis_url))


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [(0.0, "0.05"), (0.1, "0.1"), (0.11, "0.25"), (59.9, "60.0"), (600, "600.0"), (600.5, "+Inf")],
    ids=["zero", "on-a-bound", "just-over", "a-minute", "last-bound", "beyond"],
)
def test_a_latency_lands_in_the_smallest_bucket_that_holds_it(seconds: float, bucket: str) -> None:
    """Bounds are inclusive (Prometheus ``le``)."""
    assert bucket_for(seconds) == bucket


def test_counts_written_by_jobs_render_as_prometheus_counters_histogram_and_gauges(
    redis_client: redis.Redis, collector: AlertCollector
) -> None:
    """Attempts by channel and outcome, throttles by limit, a cumulative latency histogram, gauges."""
    metrics = RedisMetrics(client=redis_client)
    for _ in range(3):
        metrics.attempt("email", "delivered")
    metrics.attempt("email", "transient_failure")
    metrics.attempt("sms", "poisoned")
    metrics.throttled("email", "recipient")
    metrics.latency("email", 0.2)
    metrics.latency("email", 3.0)
    metrics.latency("email", 9000.0)
    redis_client.set("alert:poison:count", 4)
    redis_client.set("alert:queue:depth", 7)

    found = samples(render(collector).decode())
    assert found[("alert_delivery_attempts_total", (("channel", "email"), ("outcome", "delivered")))] == 3
    assert found[("alert_delivery_attempts_total", (("channel", "email"), ("outcome", "transient_failure")))] == 1
    assert found[("alert_delivery_attempts_total", (("channel", "sms"), ("outcome", "poisoned")))] == 1
    assert found[("alert_delivery_throttled_total", (("channel", "email"), ("limit", "recipient")))] == 1
    bucket = "alert_delivery_latency_seconds_bucket"
    assert found[(bucket, (("channel", "email"), ("le", "0.1")))] == 0
    assert found[(bucket, (("channel", "email"), ("le", "600.0")))] == 2
    assert found[(bucket, (("channel", "email"), ("le", "0.25")))] == 1
    assert found[(bucket, (("channel", "email"), ("le", "5.0")))] == 2
    assert found[(bucket, (("channel", "email"), ("le", "+Inf")))] == 3
    assert found[("alert_delivery_latency_seconds_count", (("channel", "email"),))] == 3
    assert found[("alert_delivery_latency_seconds_sum", (("channel", "email"),))] == pytest.approx(9003.2)
    assert found[("alert_poison_queue_size", ())] == 4
    assert found[("alert_queue_depth", ())] == 7
    assert found[("alert_metrics_redis_up", ())] == 1


def test_an_empty_store_renders_zero_gauges(collector: AlertCollector) -> None:
    """Nothing recorded yet: gauges at 0, no counter samples, Redis up."""
    found = samples(render(collector).decode())
    assert found[("alert_poison_queue_size", ())] == 0
    assert found[("alert_workers_live", ())] == 0
    assert found[("alert_suppressed_total", (("channel", "sms"),))] == 0
    assert not any(name.startswith("alert_delivery_attempts") for name, _ in found)


def test_metrics_never_raise_into_a_delivery_when_redis_is_down() -> None:
    """Writes to an unreachable Redis are swallowed; a scrape reports redis_up 0."""
    down = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    metrics = RedisMetrics(client=down)
    metrics.attempt("email", "delivered")
    metrics.throttled("email", "global")
    metrics.latency("email", 1.0)
    found = samples(render(AlertCollector(client_factory=lambda: down)).decode())
    assert found == {("alert_metrics_redis_up", ()): 0}


@pytest.fixture
def server(collector: AlertCollector) -> Iterator[MetricsServer]:
    server = MetricsServer(collector=collector, port=free_port(), addr="127.0.0.1")
    yield server
    server.close()


def test_the_http_endpoint_serves_the_current_counts(server: MetricsServer, redis_client: redis.Redis) -> None:
    """Each scrape reads Redis afresh."""
    url = f"http://127.0.0.1:{server.port}/metrics"
    RedisMetrics(client=redis_client).attempt("slack", "delivered")
    with urllib.request.urlopen(url, timeout=10) as response:
        first = samples(response.read().decode())
    RedisMetrics(client=redis_client).attempt("slack", "delivered")
    with urllib.request.urlopen(url, timeout=10) as response:
        second = samples(response.read().decode())
    key = ("alert_delivery_attempts_total", (("channel", "slack"), ("outcome", "delivered")))
    assert (first[key], second[key]) == (1, 2)


def test_live_workers_threads_and_threads_busy_come_from_the_worker_registrations(
    redis_client: redis.Redis, collector: AlertCollector
) -> None:
    """Only registrations with an alive key count; busy is the sum of their in_flight (§6.1)."""
    for name, threads, in_flight, alive in (("w-1", 8, 3, True), ("w-2", 4, 1, True), ("w-dead", 8, 8, False)):
        redis_client.hset(f"alert:worker:{name}", mapping={"threads": threads, "in_flight": in_flight})
        if alive:
            redis_client.set(f"alert:worker:{name}:alive", 1, ex=30)
    found = samples(render(collector).decode())
    assert found[("alert_workers_live", ())] == 2
    assert found[("alert_worker_threads", ())] == 12
    assert found[("alert_worker_threads_busy", ())] == 4


def test_the_scheduler_gauge_says_which_queues_have_a_scheduler(
    redis_url: str, redis_client: redis.Redis, worker_env: dict[str, str]
) -> None:
    """1 for a queue whose RQ scheduler lock is held, 0 for one without."""
    from rq.scheduler import RQScheduler

    from alert_worker.liveness import scheduler_locks
    from alert_worker.settings import Settings

    RQScheduler(["alerts"], connection=redis_client).acquire_locks()
    settings = Settings.from_env({**worker_env, "RQ_QUEUES": "alerts,bulk"})
    collector = collector_for(
        settings, client_factory=lambda: redis.Redis.from_url(redis_url), scheduler_locks=scheduler_locks
    )
    found = samples(render(collector).decode())
    assert found[("alert_scheduler_lock_held", (("queue", "alerts"),))] == 1
    assert found[("alert_scheduler_lock_held", (("queue", "bulk"),))] == 0


def test_the_oldest_due_pending_gauge_is_read_from_postgres_at_scrape_time(redis_url: str, database_url: str) -> None:
    """A pending row due 100 s ago shows as ~100 s; a row due later does not count."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO alert_deliveries (id, channel, recipient, recipient_hash, next_attempt_at, created_at) VALUES "
            "('due', 'email', 'r', 'h', now() - interval '100 seconds', now() - interval '1 hour'), "
            "('later', 'email', 'r', 'h', now() + interval '1 hour', now() - interval '2 hours')"
        )
    collector = AlertCollector(
        client_factory=lambda: redis.Redis.from_url(redis_url), oldest_due_pending=database_probe(database_url)
    )
    found = samples(render(collector).decode())
    assert found[("alert_metrics_database_up", ())] == 1
    assert 100 <= found[("alert_oldest_due_pending_age_seconds", ())] < 130


def test_an_unreachable_postgres_shows_as_database_down_not_as_nothing_due(redis_url: str) -> None:
    """No age is made up: the gauge is absent and alert_metrics_database_up is 0."""
    collector = AlertCollector(
        client_factory=lambda: redis.Redis.from_url(redis_url),
        oldest_due_pending=database_probe("postgresql://postgres@127.0.0.1:1/none", timeout_seconds=1),
    )
    found = samples(render(collector).decode())
    assert found[("alert_metrics_database_up", ())] == 0
    assert ("alert_oldest_due_pending_age_seconds", ()) not in found
    assert found[("alert_metrics_redis_up", ())] == 1


def test_the_channel_paused_gauge_is_one_for_each_paused_channel(
    redis_client: redis.Redis, collector: AlertCollector
) -> None:
    """§7.7: ``alert_channel_paused{channel}`` is 1 while the channel's pause key exists, 0 otherwise."""
    redis_client.set("alert:paused:sms", "twilio 20003 authentication failed (configuration error)", ex=300)
    found = samples(render(collector).decode())
    assert found[("alert_channel_paused", (("channel", "sms"),))] == 1
    assert found[("alert_channel_paused", (("channel", "email"),))] == 0
    assert found[("alert_channel_paused", (("channel", "slack"),))] == 0


def test_held_deliveries_and_carried_ones_are_exported_per_channel(
    redis_url: str, redis_client: redis.Redis, database_url: str
) -> None:
    """§8: ``alert_held`` counts pending rows held by a recipient limit or a cooldown (not other deferrals);
    ``alert_carried_total`` and ``alert_held_released_total`` count what jobs recorded."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO alert_deliveries (id, channel, recipient, recipient_hash, error_message) VALUES "
            "('h1', 'sms', 'r', 'h', 'rate_limited: recipient limit'), "
            "('h2', 'sms', 'r', 'h', 'rate_limited: cooldown, the sms provider asked to slow down (30s left)'), "
            "('c1', 'sms', 'r', 'h', 'rate_limited: channel limit'), "
            "('h3', 'slack', 'r', 'h', 'rate_limited: recipient limit')"
        )
    metrics = RedisMetrics(client=redis_client)
    metrics.carried("sms", 16)
    metrics.released("sms")
    collector = collector_for(
        _settings(database_url, redis_url), client_factory=lambda: redis.Redis.from_url(redis_url)
    )
    found = samples(render(collector).decode())
    held = {dict(labels)["channel"]: v for (name, labels), v in found.items() if name == "alert_held"}
    assert held == {"email": 0, "slack": 1, "sms": 2}
    assert found[("alert_carried_total", (("channel", "sms"),))] == 16
    assert found[("alert_carried_total", (("channel", "email"),))] == 0
    assert found[("alert_held_released_total", (("channel", "sms"),))] == 1


def _settings(database_url: str, redis_url: str) -> Settings:
    return Settings(database_url=database_url, redis_url=redis_url)
