"""Serve the metrics as Prometheus text from the worker's parent process (``ALERT_METRICS_PORT``).

Imported only by ``main()``: ``prometheus_client`` costs ~90 ms to import and a job never needs it.
A scrape reads the counters jobs keep in Redis, the live worker registrations (§6.1), the scheduler locks,
and the age of the oldest due pending delivery (one index probe, ``overview``).

Scrapes take turns on one Redis client and one Postgres connection, kept across scrapes; a connection
found broken is closed and the next scrape opens a new one (docs/contract.md §7.6).

The HTTP side (``MetricsServer``): at most ``MAX_HANDLER_THREADS`` handlers run at once (further connections
wait to be accepted, briefly), and a client has ``REQUEST_READ_SECONDS`` to send its whole request head, so
half-sent requests can neither hold a thread for long nor pile threads up (§7.6). One request per
connection; nothing is logged (a request line may be anything a client sent).
"""

from __future__ import annotations

import contextlib
import io
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, make_server

import psycopg
import redis
import structlog
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from alert_worker.connect import postgres_kwargs
from alert_worker.cooldown import paused_channels
from alert_worker.keys import RedisKeys
from alert_worker.metrics import CHANNELS, LATENCY_BUCKETS, le_label, split_field
from alert_worker.overview import held_counts, live_workers, oldest_due_pending_seconds
from alert_worker.settings import Settings

log = structlog.get_logger("alert_worker.metrics")
_T = TypeVar("_T")

SCRAPE_WAIT_SECONDS = 15.0  # a scrape waits this long for the one before it, then reports the stores down
_REDIS_UP = "1 when the metrics store (Redis) answered this scrape"
_DATABASE_UP = "1 when Postgres answered this scrape"

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
    """Reads Redis (and, when given, Postgres) at scrape time, one scrape at a time, on kept connections.

    ``client_factory`` is called for the first scrape and again only after a scrape found Redis failing;
    ``oldest_due_pending`` keeps its own connection (``DatabaseProbe``). Only the parent process scrapes.
    """

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
        self._client: redis.Redis | None = None
        self._prefix = prefix
        self._keys = RedisKeys(prefix)
        self._oldest_due_pending = oldest_due_pending
        self._scheduler_probe = scheduler_probe
        self._turn = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        if not self._turn.acquire(timeout=SCRAPE_WAIT_SECONDS):
            log.warning("metrics_scrape_busy", waited_seconds=SCRAPE_WAIT_SECONDS)
            return iter(self._all_down())
        try:
            return iter(list(self._collect()))
        finally:
            self._turn.release()

    def close(self) -> None:
        """Close the kept connections (the server is stopping)."""
        with self._turn:
            self._drop_client()
            closer = getattr(self._oldest_due_pending, "close", None)
            if closer is not None:
                closer()

    def _all_down(self) -> list[Metric]:
        down: list[Metric] = [GaugeMetricFamily("alert_metrics_redis_up", _REDIS_UP, value=0)]
        if self._oldest_due_pending is not None:
            down.append(GaugeMetricFamily("alert_metrics_database_up", _DATABASE_UP, value=0))
        return down

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(redis.RedisError):
                client.close()

    def _collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("alert_metrics_redis_up", _REDIS_UP)
        try:
            if self._client is None:
                self._client = self._client_factory()
            families = self._read(self._client)
        except (redis.RedisError, OSError, ValueError) as exc:
            log.warning("metrics_read_failed", error=type(exc).__name__)
            self._drop_client()  # the next scrape opens a new client
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
        up = GaugeMetricFamily("alert_metrics_database_up", _DATABASE_UP)
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

    def _read(self, client: redis.Redis) -> list[Metric]:
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
        paused = paused_channels(client, self._prefix)
        schedulers = self._scheduler_probe(client) if self._scheduler_probe else None
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
        pause = GaugeMetricFamily(
            "alert_channel_paused", "1 while the channel is paused: its settings were refused", labels=["channel"]
        )
        for channel in CHANNELS:
            pause.add_metric([channel], 1 if channel in paused else 0)
        families.append(pause)
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


class DatabaseProbe:
    """The scrape's Postgres reads on one connection kept across scrapes, each in a bounded transaction.

    ``SET LOCAL`` (inside the transaction) so a PgBouncer in transaction mode never carries the timeout
    over to another client's server connection. A connection found broken (Postgres restarted, the network
    dropped it) is closed; a kept one is replaced at once and the read asked once more on the new one.
    Calling it reads the oldest due pending delivery's age; ``held`` the held deliveries per channel (§8).
    """

    def __init__(self, database_url: str, *, timeout_seconds: int = 5, connect_kwargs: dict[str, Any] | None = None):
        self._url = database_url
        self._timeout = timeout_seconds
        self._kwargs = {**(connect_kwargs or {}), "connect_timeout": timeout_seconds, "autocommit": True}
        self._conn: psycopg.Connection[Any] | None = None

    def __call__(self) -> float | None:
        return self._read(oldest_due_pending_seconds)

    def held(self) -> dict[str, int]:
        return self._read(held_counts)

    def _read(self, query: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        kept = self._conn is not None
        try:
            return self._query(query)
        except (psycopg.Error, OSError):
            if not (kept and self._conn is None):
                raise
        return self._query(query)  # the kept connection had broken: once more on a new one

    def _query(self, query: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        if self._conn is None:
            self._conn = psycopg.connect(self._url, **self._kwargs)
        conn = self._conn
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL statement_timeout = {int(self._timeout * 1000)}")
                return query(conn)
        except (psycopg.Error, OSError):
            if conn.closed or conn.broken:
                self.close()
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


database_probe = DatabaseProbe  # what ``AlertCollector`` calls for ``alert_oldest_due_pending_age_seconds``


def collector_for(
    settings: Settings,
    *,
    client_factory: Callable[[], redis.Redis],
    scheduler_locks: Callable[[redis.Redis, Sequence[str]], dict[str, bool]] | None = None,
) -> AlertCollector:
    """The collector ``main()`` serves: Redis counters, Postgres due-pending age, workers, scheduler locks."""
    queues: Sequence[str] = list(settings.queues)
    probe = (lambda client: scheduler_locks(client, queues)) if scheduler_locks else None
    database = None
    if settings.database_url:
        database = database_probe(settings.database_url, connect_kwargs=postgres_kwargs(settings))
    return AlertCollector(
        client_factory=client_factory,
        prefix=settings.redis_key_prefix,
        oldest_due_pending=database,
        scheduler_probe=probe,
        held=database.held if database is not None else None,
    )


def registry_for(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(collector: Collector) -> bytes:
    """The Prometheus text exposition (what the HTTP endpoint serves)."""
    return bytes(generate_latest(registry_for(collector)))


MAX_HANDLER_THREADS = 8  # concurrent HTTP handlers; Prometheus scrapes one at a time per target
REQUEST_READ_SECONDS = 3.0  # a client has this long to send its request line and headers
SLOT_WAIT_SECONDS = 1.0  # an accepted connection waits this long for a free handler, then is closed
SOCKET_TIMEOUT_SECONDS = 10.0  # any one read or write on a client socket


class _Handler(WSGIRequestHandler):
    """One request per connection, read within ``REQUEST_READ_SECONDS`` in all; logs nothing."""

    timeout = SOCKET_TIMEOUT_SECONDS

    def setup(self) -> None:
        super().setup()
        unused, self.rfile = self.rfile, io.BytesIO(self._request_head())
        unused.close()

    def _request_head(self) -> bytes:
        """The request line and headers, or what came of them before the deadline (then served as bad)."""
        head = bytearray()
        deadline = time.monotonic() + REQUEST_READ_SECONDS
        try:
            while b"\r\n\r\n" not in head and len(head) <= 65536:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return b""
                self.connection.settimeout(remaining)
                chunk = self.connection.recv(4096)
                if not chunk:
                    break
                head += chunk
        except OSError:  # the deadline passed inside recv, or the client reset
            return b""
        finally:
            self.connection.settimeout(self.timeout)
        return bytes(head)

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing (a request line may be anything a client sent)."""


class _BoundedServer(ThreadingWSGIServer):
    """At most ``MAX_HANDLER_THREADS`` handlers at once; further connections wait to be accepted.

    A scrape takes milliseconds, so a burst of scrapes is served in turn; a connection accepted while
    every handler is busy for ``SLOT_WAIT_SECONDS`` (half-sent requests holding them) is closed unanswered.
    Every accepted connection is thus answered or dropped within its read deadline plus the slot wait.
    """

    request_queue_size = 64  # connections the kernel holds while every handler is busy

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_HANDLER_THREADS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(timeout=SLOT_WAIT_SECONDS):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One structured line instead of socketserver's traceback on stderr (a client hung up, mostly)."""
        log.warning("metrics_request_failed", error=type(sys.exc_info()[1]).__name__)


class MetricsServer:
    """``ALERT_METRICS_PORT``: a daemon HTTP thread serving ``/metrics`` from the worker's parent process."""

    def __init__(self, *, collector: Collector, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104
        family, _, _, _, sockaddr = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]

        class Server(_BoundedServer):
            address_family = family

        self._collector = collector
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        self._server = make_server(str(sockaddr[0]), port, make_wsgi_app(registry), Server, handler_class=_Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="alert-metrics", daemon=True)
        self._thread.start()
        self.port = int(self._server.server_port)

    def listener(self) -> socket.socket:
        """The listening socket (a forked child closes its copy: ``rq_guard.ChildGuard``)."""
        sock: socket.socket = self._server.socket
        return sock

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        close = getattr(self._collector, "close", None)  # AlertCollector's kept connections
        if close is not None:
            close()
