"""Every metric the dashboard and the alert rules query is one the worker's /metrics really exports.

Real deliveries run through ``execute_delivery_job`` against Postgres, Redis and the loopback SMTP sink
on every outcome path (delivered, retried, poisoned, deferred by a rate limit); then the metrics server
``main()`` would start (``collector_for``) is scraped over HTTP.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
import redis

from alert_worker import execute_delivery_job
from alert_worker.liveness import scheduler_locks
from alert_worker.metrics_server import MetricsServer, collector_for
from alert_worker.settings import Settings
from tests.integration.test_metrics import samples
from tests.promql import PROMETHEUS_SERIES, alert_exprs, dashboard_exprs, metric_names
from tests.support.smtp import SmtpSink, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def scraped(
    monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str], smtp_sink: SmtpSink, redis_url: str
) -> Iterator[dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """One delivery per outcome path, then one scrape of /metrics."""
    for key, value in {
        **worker_env,
        "ALERT_RATE_EMAIL_PER_RECIPIENT_HOUR": "1",
        "ALERT_MAX_DEFER_SECONDS": "7200",
    }.items():
        monkeypatch.setenv(key, value)
    outcomes = [execute_delivery_job("m-delivered", "email", "ok@example.com", "s", "b")["outcome"]]
    smtp_sink.data_replies.append("451 4.3.0 try again later")
    outcomes.append(execute_delivery_job("m-retried", "email", "retry@example.com", "s", "b")["outcome"])
    smtp_sink.data_replies.append("554 5.6.0 message refused")
    outcomes.append(execute_delivery_job("m-poisoned", "email", "refused@example.com", "s", "b")["outcome"])
    deferred = execute_delivery_job("m-deferred", "email", "ok@example.com", "s", "b")
    outcomes.append(deferred["outcome"])
    assert outcomes == ["delivered", "retry_scheduled", "poisoned", "retry_scheduled"]
    assert deferred["error"] == "rate_limited: recipient limit"

    settings = Settings.from_env()
    collector = collector_for(
        settings, client_factory=lambda: redis.Redis.from_url(redis_url), scheduler_locks=scheduler_locks
    )
    server = MetricsServer(collector=collector, port=free_port(), addr="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as response:
            yield samples(response.read().decode())
    finally:
        server.close()


def _exported(found: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    return {name for name, _ in found}


def test_the_deliveries_show_on_every_outcome_path(
    scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float],
) -> None:
    """Delivered, retried (by reason), poisoned, throttled and deferred are each counted once."""
    email = ("channel", "email")
    assert scraped[("alert_delivery_attempts_total", (email, ("outcome", "delivered")))] == 1
    assert scraped[("alert_delivery_attempts_total", (email, ("outcome", "transient_failure")))] == 1
    assert scraped[("alert_delivery_attempts_total", (email, ("outcome", "poisoned")))] == 1
    assert scraped[("alert_delivery_retries_total", (email, ("reason", "smtp_4xx")))] == 1
    assert scraped[("alert_delivery_throttled_total", (email, ("limit", "recipient")))] == 1
    assert scraped[("alert_delivery_deferrals_total", (email, ("reason", "recipient")))] == 1
    assert scraped[("alert_delivery_latency_seconds_count", (email,))] == 1
    assert scraped[("alert_metrics_database_up", ())] == 1
    assert scraped[("alert_oldest_due_pending_age_seconds", ())] == 0, "the retry and the deferral are not due yet"


@pytest.mark.parametrize(
    "exprs", [dashboard_exprs, alert_exprs], ids=["grafana-dashboard.json", "prometheus-alerts.yml"]
)
def test_every_metric_name_in_the_deploy_files_is_exported(
    scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float], exprs: object
) -> None:
    """A renamed metric cannot leave a panel or an alert rule silently empty."""
    assert callable(exprs)
    wanted = set().union(*(metric_names(e) for e in exprs())) - PROMETHEUS_SERIES
    assert len(wanted) >= 8, wanted
    assert wanted <= _exported(scraped), sorted(wanted - _exported(scraped))
