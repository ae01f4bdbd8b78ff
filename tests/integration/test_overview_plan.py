"""The overview stays an index read at 1,000,000 deliveries: the plans, not the timings, are checked.

The rows are generated in this test's own throwaway database (``generate_series``), then ANALYZEd as
autovacuum would. A Seq Scan on ``alert_deliveries`` in any overview query would make ``status`` (and
every metrics scrape) slower with every delivery ever made.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from alert_worker.overview import COUNT_EXACT_SQL, OLDEST_DUE_SQL, collect_overview

pytestmark = pytest.mark.integration

ROWS = 1_000_000
# 0.1 % each pending, in progress and poison; 1 % failed; the rest delivered. Channels round-robin.
GENERATE = f"""
INSERT INTO alert_deliveries (id, channel, recipient, recipient_hash, status, next_attempt_at, created_at, updated_at)
SELECT 'd-' || g, (ARRAY['email', 'slack', 'sms'])[1 + g % 3], 'o***@example.com', 'h',
       CASE WHEN g % 1000 = 0 THEN 'pending' WHEN g % 1000 = 1 THEN 'in_progress'
            WHEN g % 1000 = 2 THEN 'poison' WHEN g % 100 = 3 THEN 'failed' ELSE 'delivered' END,
       CASE WHEN g % 2000 = 0 THEN now() + interval '1 hour' END,
       now() - make_interval(secs => g), now()
FROM generate_series(1, {ROWS}) AS g
"""


@pytest.fixture(scope="module")
def big_database(template_database: str) -> Iterator[str]:
    """One throwaway database with a million deliveries, shared by this module's tests."""
    import uuid

    from tests.conftest import ADMIN_DSN, _with_database

    name = f"alert_big_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    url = _with_database(ADMIN_DSN, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(GENERATE)
            conn.execute("ANALYZE alert_deliveries")
        yield url
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _plan(url: str, sql: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        raw = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}").fetchone()
    assert raw is not None
    doc = json.loads(raw[0]) if isinstance(raw[0], str) else raw[0]
    return list(_nodes(doc[0]["Plan"]))


@pytest.mark.parametrize(
    ("sql", "index"),
    [
        (OLDEST_DUE_SQL, "alert_deliveries_due_pending_idx"),
        (COUNT_EXACT_SQL, "alert_deliveries_status_channel_idx"),
    ],
    ids=["oldest-due-pending", "exact-status-counts"],
)
def test_the_overview_queries_read_an_index_not_the_whole_table(big_database: str, sql: str, index: str) -> None:
    """No Seq Scan on alert_deliveries at a million rows; the index made for the query is the one used."""
    nodes = _plan(big_database, sql)
    scans = [n["Node Type"] for n in nodes if n.get("Relation Name") == "alert_deliveries"]
    assert scans and "Seq Scan" not in scans, scans
    assert index in {n.get("Index Name") for n in nodes}, [(n["Node Type"], n.get("Index Name")) for n in nodes]


def test_at_a_million_rows_open_counts_are_exact_and_terminal_counts_close_estimates(big_database: str) -> None:
    """Every status counted exactly but ``delivered``, a planner estimate within a few percent of the truth.

    (The delivered count is an EXPLAIN: it reads statistics, never the rows. ANALYZE samples 30,000 rows,
    so the estimate errs by about 2 % at most, measured; 5 % keeps the test from flaking.)"""
    with psycopg.connect(big_database) as conn:
        truth = {
            (s, c): n
            for s, c, n in conn.execute("SELECT status, channel, count(*) FROM alert_deliveries GROUP BY 1, 2")
        }
    pool = ConnectionPool(big_database, min_size=1, max_size=1, open=True)
    try:
        view = collect_overview(
            database=pool,
            redis_client=_NoKeys(),  # type: ignore[arg-type]
            prefix="alert:",
            queues=["alerts"],
            scheduler_probe=lambda queues: dict.fromkeys(queues, False),
        )
    finally:
        pool.close()
    assert view.estimated == {"delivered"}
    for (status, channel), n in truth.items():
        got = view.deliveries[status][channel]
        if status in view.estimated:
            assert abs(got - n) <= 0.05 * n, (status, channel, got, n)
        else:
            assert got == n, (status, channel, got, n)
    assert view.poison == truth[("poison", "email")] + truth[("poison", "slack")] + truth[("poison", "sms")]
    assert view.oldest_due_pending_seconds is not None and view.oldest_due_pending_seconds > 990_000


class _NoKeys:
    """A Redis stand-in with no keys: this test is about Postgres."""

    def scan_iter(self, **_: object) -> Iterator[bytes]:
        return iter(())

    def mget(self, names: list[str]) -> list[None]:
        return [None] * len(names)
