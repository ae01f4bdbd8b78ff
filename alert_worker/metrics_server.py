"""Serve the Redis-kept metrics as Prometheus text from the worker's parent process (``ALERT_METRICS_PORT``).

Imported only by ``main()``: ``prometheus_client`` costs ~90 ms to import and a job never needs it.
A scrape opens its own Redis client (the HTTP thread shares nothing with forked work-horses).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import redis
import structlog
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from alert_worker.metrics import LATENCY_BUCKETS, MetricKeys, le_label, split_field

log = structlog.get_logger("alert_worker.metrics")


class AlertCollector(Collector):
    """Reads the Redis counters and gauges at scrape time, with a fresh client per scrape (fork-safe)."""

    def __init__(
        self,
        *,
        client_factory: Callable[[], redis.Redis],
        prefix: str = "alert:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client_factory = client_factory
        self._keys = MetricKeys(prefix)
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("alert_metrics_redis_up", "1 when the metrics store (Redis) answered this scrape")
        try:
            families = self._read()
        except redis.RedisError as exc:
            log.warning("metrics_read_failed", error=type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[Metric]:
        client = self._client_factory()
        try:
            pipe = client.pipeline(transaction=False)
            keys = self._keys
            pipe.hgetall(keys.attempts)
            pipe.hgetall(keys.throttled)
            pipe.hgetall(keys.latency_buckets)
            pipe.hgetall(keys.latency_sum)
            pipe.mget([keys.poison, keys.queue_depth, keys.oldest_pending_since])
            pipe.hgetall(keys.suppressed)
            pipe.hgetall(keys.unknown_outcomes)
            attempts, throttled, buckets, sums, gauges, suppressed, unknown = pipe.execute()
        finally:
            client.close()
        return [
            _counter("alert_delivery_attempts", "Delivery outcomes by channel", ("channel", "outcome"), attempts),
            _counter(
                "alert_delivery_throttled",
                "Rate-limit denials (each defers a delivery)",
                ("channel", "limit"),
                throttled,
            ),
            _histogram(buckets, sums),
            *self._gauges(gauges),
            _per_channel("alert_suppressed", "Deliveries poisoned unsent: recipient suppressed", suppressed),
            _per_channel("alert_unknown_outcomes", "Attempts sent without an answer (outcome unknown)", unknown),
        ]

    def _gauges(self, values: list[bytes | None]) -> list[Metric]:
        poison, depth, oldest_since = (int(v) if v is not None else 0 for v in values)
        age = max(0.0, self._clock() - oldest_since) if oldest_since > 0 else 0.0
        return [
            GaugeMetricFamily("alert_poison_queue_size", "Deliveries parked in the poison queue", value=poison),
            GaugeMetricFamily("alert_queue_depth", "Pending and in-progress deliveries (approximate)", value=depth),
            GaugeMetricFamily(
                "alert_oldest_pending_age_seconds",
                "Age of the oldest pending delivery never attempted yet (as of the last sweep)",
                value=age,
            ),
        ]


def _counter(name: str, doc: str, labels: tuple[str, str], values: dict[bytes, bytes]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for field_name, count in sorted(values.items()):
        family.add_metric(list(split_field(field_name)), int(count))
    return family


def _per_channel(name: str, doc: str, values: dict[bytes, bytes]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=["channel"])
    for channel, count in sorted(values.items()):
        family.add_metric([channel.decode() if isinstance(channel, bytes) else channel], int(count))
    return family


def _histogram(buckets: dict[bytes, bytes], sums: dict[bytes, bytes]) -> Metric:
    """Cumulate the stored per-bucket counts into Prometheus buckets, per channel."""
    family = HistogramMetricFamily(
        "alert_delivery_latency_seconds",
        "Seconds from the delivery's creation to the provider accepting it",
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
