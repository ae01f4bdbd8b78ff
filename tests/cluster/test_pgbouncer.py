"""The job path through PgBouncer in transaction mode (Debian's 1.18, server connections round-robin)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from alert_worker import execute_delivery_job
from alert_worker.connect import postgres_kwargs
from alert_worker.resources import close_process_resources
from alert_worker.settings import Settings
from tests.cluster.pgbouncer import PgBouncer
from tests.support.smtp import SmtpSink

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def _repeat_on_three_connections(url: str, **kwargs: Any) -> None:
    """Run one statement 20 times on each of three client connections, interleaved."""
    connections = [psycopg.connect(url, **kwargs) for _ in range(3)]
    try:
        for i in range(20):
            for conn in connections:
                assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
    finally:
        for conn in connections:
            conn.close()


def test_psycopgs_automatic_preparation_breaks_under_transaction_pooling(pgbouncer: PgBouncer) -> None:
    """Why the setting exists: with psycopg's default, a repeated statement fails through PgBouncer 1.18."""
    with pytest.raises(psycopg.errors.Error, match="prepared statement"):
        _repeat_on_three_connections(pgbouncer.route(pgbouncer.upstream), autocommit=True)


def test_the_pooler_setting_keeps_repeated_statements_working(pgbouncer: PgBouncer) -> None:
    """ALERT_DB_POOLER=pgbouncer: the package's connection kwargs survive transaction pooling."""
    settings = Settings.from_env({"ALERT_DB_POOLER": "pgbouncer"})
    _repeat_on_three_connections(pgbouncer.route(pgbouncer.upstream), **postgres_kwargs(settings))


@pytest.fixture
def through_pgbouncer(
    monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str], pgbouncer: PgBouncer
) -> Iterator[str]:
    """The test's environment with DATABASE_URL through PgBouncer and process-scoped connections."""
    url = pgbouncer.route(worker_env["DATABASE_URL"])
    env = {**worker_env, "DATABASE_URL": url, "ALERT_DB_POOLER": "pgbouncer", "ALERT_RESOURCE_SCOPE": "process"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for limit in ("EMAIL_PER_MIN", "EMAIL_PER_RECIPIENT_HOUR", "GLOBAL_PER_MIN"):
        monkeypatch.setenv(f"ALERT_RATE_{limit}", "0")
    yield url
    close_process_resources()


def test_thirty_jobs_on_one_process_connection_deliver_through_pgbouncer(
    through_pgbouncer: str, smtp_sink: SmtpSink
) -> None:
    """Process scope reuses one connection for 30 jobs (each statement far past psycopg's threshold of 5)."""
    for n in range(30):
        result = execute_delivery_job(f"bouncer-{n}", "email", "ops@example.com", "Disk full", f"n={n}")
        assert result["outcome"] == "delivered", result
    again = execute_delivery_job("bouncer-0", "email", "ops@example.com", "Disk full", "n=0")
    assert again["outcome"] == "skipped"
    assert len(smtp_sink.accepted) == 30
    with psycopg.connect(through_pgbouncer, prepare_threshold=None) as conn:
        row = conn.execute("SELECT count(*) FROM alert_deliveries WHERE status = 'delivered'").fetchone()
    assert row == (30,)
