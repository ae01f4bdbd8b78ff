"""Serve the metrics as Prometheus text from the worker's parent process (``ALERT_METRICS_PORT``).

Imported only by ``main()``: ``prometheus_client`` costs ~90 ms to import and a job never needs it.
A scrape opens its own Redis client and Postgres connection (the HTTP thread shares nothing with forked
work-horses) and reads: the counters jobs keep in Redis, the live worker registrations (§6.1), the
scheduler locks, and the age of the oldest due pending delivery (one index probe, ``overview``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import psycopg
import redis
import structlog
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from alert_worker.keys import RedisKeys
from alert_worker.metrics import CHANNELS, LATENCY_BUCKETS, le_label, split_field
from alert_worker.overview import held_counts, live_workers, oldest_due_pending_seconds
from alert_worker.settings import Settings

log = structlog.get_logger("alert_worker.metrics")

# (family name, help, second label) of the Redis hashes keyed "<channel>|<label>".
_LABELLED_COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    ("attempts", "alert_delivery_attempts", "Send outcomes (delivered, transient_failure, poisoned)", "outcome"),
    ("throttled", "alert_delivery_throttled", "Rate-limit denials by limit (each defers a delivery)", "limit"),
    ("deferrals", "alert_delivery_deferrals", "Deliveries put off without using an attempt, by reason", "reason"),
    ("retries", "alert_delivery_retries", "Retries scheduled after a transient failure, by reason class", "reason"),
)
_CHANNEL_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("suppressed", "alert_suppressed", "Deliveries poisoned because the recipient is suppressed"),
    ("unknown_outcomes", "alert_unknown_outcomes", "Attempts that may have reached the provider with no answer"),
    ("carried", "alert_carried", "Held deliveries delivered inside another delivery's message (§8)"),
    ("released", "alert_held_released", "Operator releases (`alert-worker release`) that passed the limit once"),
)


class AlertCollector(Collector):
    """Reads Redis (and, when given, Postgres) at scrape time, with fresh connections per scrape (fork-safe)."""

    def __init__(
        self,
        *,
        client_factory: Callable[[], redis.Redis],
        prefix: str = "alert:",
        oldest_due_pending: Callable[[], float | None] | None = None,
        scheduler_probe: Callable[[redis.Redis], dict[str, bool]] | None = None,
        held: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self._held = held
        self._client_factory = client_factory
        self._prefix = prefix
        self._keys = RedisKeys(prefix)
        self._oldest_due_pending = oldest_due_pending
        self._scheduler_probe = scheduler_probe

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("alert_metrics_redis_up", "1 when the metrics store (Redis) answered this scrape")
        try:
            families = self._read()
        except redis.RedisError as exc:
            log.warning("metrics_read_failed", error=type(exc).__name__)
            up.add_metric([], 0)
            yield up
        else:
            up.add_metric([], 1)
            yield up
            yield from families
        if self._oldest_due_pending is not None:
            yield from self._database()

    def _database(self) -> Iterator[Metric]:
        assert self._oldest_due_pending is not None
        up = GaugeMetricFamily("alert_metrics_database_up", "1 when Postgres answered this scrape")
        try:
            age = self._oldest_due_pending()
        except (psycopg.Error, OSError) as exc:
            log.warning("metrics_database_read_failed", error=type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily(
            "alert_oldest_due_pending_age_seconds",
            "Seconds since the oldest due pending delivery became due (0 when none is due)",
            value=age or 0.0,
        )
        if self._held is not None:
            try:
                counts = self._held()
            except (psycopg.Error, OSError) as exc:
                log.warning("metrics_database_read_failed", error=type(exc).__name__)
                return
            held = GaugeMetricFamily(
                "alert_held", "Deliveries held for their recipient's next message (§8)", labels=["channel"]
            )
            for channel in sorted(set(CHANNELS) | set(counts)):
                held.add_metric([channel], counts.get(channel, 0))
            yield held

    def _read(self) -> list[Metric]:
        client = self._client_factory()
        try:
            keys = self._keys
            pipe = client.pipeline(transaction=False)
            for attr, *_ in _LABELLED_COUNTERS:
                pipe.hgetall(getattr(keys, f"metrics_{attr}"))  # RedisKeys.metrics_attempts, ...
            for attr, *_ in _CHANNEL_COUNTERS:
                pipe.hgetall(getattr(keys, f"metrics_{attr}"))
            pipe.hgetall(keys.metrics_latency_buckets)
            pipe.hgetall(keys.metrics_latency_sum)
            pipe.mget([keys.poison_count, keys.queue_depth])
            replies = pipe.execute()
            workers = live_workers(client, self._prefix)
            schedulers = self._scheduler_probe(client) if self._scheduler_probe else None
        finally:
            client.close()
        n = len(_LABELLED_COUNTERS)
        families: list[Metric] = [
            _counter(name, doc, ("channel", label), values)
            for (_, name, doc, label), values in zip(_LABELLED_COUNTERS, replies[:n], strict=True)
        ]
        families += [
            _per_channel(name, doc, values)
            for (_, name, doc), values in zip(_CHANNEL_COUNTERS, replies[n : n + len(_CHANNEL_COUNTERS)], strict=True)
        ]
        buckets, sums, gauges = replies[n + len(_CHANNEL_COUNTERS) :]
        families.append(_histogram(buckets, sums))
        poison, depth = (int(v) if v is not None else 0 for v in gauges)
        families += [
            GaugeMetricFamily("alert_poison_queue_size", "Deliveries parked in the poison queue", value=poison),
            GaugeMetricFamily("alert_queue_depth", "Pending and in-progress deliveries (approximate)", value=depth),
            GaugeMetricFamily("alert_workers_live", "Worker processes whose alive key exists", value=len(workers)),
            GaugeMetricFamily(
                "alert_worker_threads", "Delivery threads of the live workers", value=sum(w.threads for w in workers)
            ),
            GaugeMetricFamily(
                "alert_worker_threads_busy",
                "Deliveries in flight on the live workers (sum of in_flight)",
                value=sum(w.in_flight for w in workers),
            ),
        ]
        if schedulers is not None:
            held = GaugeMetricFamily(
                "alert_scheduler_lock_held", "1 when an RQ scheduler holds the queue's lock", labels=["queue"]
            )
            for queue, is_held in sorted(schedulers.items()):
                held.add_metric([queue], 1 if is_held else 0)
            families.append(held)
        return families


def _counter(name: str, doc: str, labels: tuple[str, str], values: dict[bytes, bytes]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for field_name, count in sorted(values.items()):
        family.add_metric(list(split_field(field_name)), int(count))
    return family


def _per_channel(name: str, doc: str, values: dict[bytes, bytes]) -> Metric:
    """One sample per channel, zeros included, so rate() and alert rules see the series from the start."""
    counts = {k.decode(): int(v) for k, v in values.items()}
    family = CounterMetricFamily(name, doc, labels=["channel"])
    for channel in sorted(set(CHANNELS) | set(counts)):
        family.add_metric([channel], counts.get(channel, 0))
    return family


def _histogram(buckets: dict[bytes, bytes], sums: dict[bytes, bytes]) -> Metric:
    """Cumulate the stored per-bucket counts into Prometheus buckets, per channel."""
    family = HistogramMetricFamily(
        "alert_delivery_latency_seconds",
        "Seconds from enqueue (the delivery's row creation) to the provider accepting it",
        labels=["channel"],
    )
    per_channel: dict[str, dict[str, int]] = {}
    for field_name, count in buckets.items():
        channel, le = split_field(field_name)
        per_channel.setdefault(channel, {})[le] = int(count)
    for channel, counts in sorted(per_channel.items()):
        running = 0
        cumulative: list[tuple[str, float]] = []
        for le in [*(le_label(b) for b in LATENCY_BUCKETS), "+Inf"]:
            running += counts.get(le, 0)
            cumulative.append((le, running))
        total = float(sums.get(channel.encode(), b"0"))
        family.add_metric([channel], cumulative, total)
    return family


def database_probe(database_url: str, *, timeout_seconds: int = 5) -> Callable[[], float | None]:
    """The oldest-due-pending query on a fresh, bounded connection per scrape.

    ``SET LOCAL`` (inside the transaction) so a PgBouncer in transaction mode never carries the timeout
    over to another client's server connection.
    """

    def probe() -> float | None:
        with psycopg.connect(database_url, connect_timeout=timeout_seconds) as conn, conn.transaction():
            conn.execute(f"SET LOCAL statement_timeout = {int(timeout_seconds * 1000)}")
            return oldest_due_pending_seconds(conn)

    return probe


def held_probe(database_url: str, *, timeout_seconds: int = 5) -> Callable[[], dict[str, int]]:
    """Held deliveries per channel (``overview.held_counts``) on a fresh, bounded connection per scrape."""

    def probe() -> dict[str, int]:
        with psycopg.connect(database_url, connect_timeout=timeout_seconds) as conn, conn.transaction():
            conn.execute(f"SET LOCAL statement_timeout = {int(timeout_seconds * 1000)}")
            return held_counts(conn)

    return probe


def collector_for(
    settings: Settings,
    *,
    client_factory: Callable[[], redis.Redis],
    scheduler_locks: Callable[[redis.Redis, Sequence[str]], dict[str, bool]] | None = None,
) -> AlertCollector:
    """The collector ``main()`` serves: Redis counters, Postgres due-pending age, workers, scheduler locks."""
    queues: Sequence[str] = list(settings.queues)
    probe = (lambda client: scheduler_locks(client, queues)) if scheduler_locks else None
    return AlertCollector(
        client_factory=client_factory,
        prefix=settings.redis_key_prefix,
        oldest_due_pending=database_probe(settings.database_url) if settings.database_url else None,
        scheduler_probe=probe,
        held=held_probe(settings.database_url) if settings.database_url else None,
    )


def registry_for(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(collector: Collector) -> bytes:
    """The Prometheus text exposition (what the HTTP endpoint serves)."""
    return bytes(generate_latest(registry_for(collector)))


class MetricsServer:
    """``ALERT_METRICS_PORT``: a daemon HTTP thread serving ``/metrics`` from the worker's parent process."""

    def __init__(self, *, collector: Collector, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104
        self._server, self._thread = start_http_server(port, addr=addr, registry=registry_for(collector))
        self.port = int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
