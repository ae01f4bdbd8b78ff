"""``alert_suppressed_total`` and ``alert_unknown_outcomes_total``: written by jobs to Redis, rendered by the parent."""

from __future__ import annotations

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from alert_worker.metrics import RedisMetrics
from alert_worker.metrics_server import AlertCollector, render

pytestmark = pytest.mark.integration


def test_suppressed_and_unknown_outcome_counters_render_per_channel(redis_url: str) -> None:
    """Two suppressed SMS, one unknown e-mail outcome: counters by channel, as Prometheus ``_total``, zeros shown."""
    client = redis.Redis.from_url(redis_url)
    metrics = RedisMetrics(client=client)
    metrics.suppressed("sms")
    metrics.suppressed("sms")
    metrics.unknown_outcome("email")
    text = render(AlertCollector(client_factory=lambda: redis.Redis.from_url(redis_url))).decode()
    client.close()
    found = {
        (s.name, s.labels.get("channel")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert found[("alert_suppressed_total", "sms")] == 2
    assert found[("alert_unknown_outcomes_total", "email")] == 1
    assert found[("alert_suppressed_total", "email")] == 0  # every channel's series exists from the start
