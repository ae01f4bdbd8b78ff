"""A Postgres behind a proxy that stops relaying (docs/contract.md §7.3; the f02 reproduction): the kernel
behind the proxy still ACKs and answers keepalives, so nothing but the job timeout can end a call waiting on
it. In the thread-pooled worker the timeout is an asynchronous exception, delivered only once the blocked libpq
call returns: the death penalty also shuts down the sockets of the connections the job's thread holds
(``threaded_worker.HeldConnections``), so the call returns, the job ends with ``JobTimeoutException``, and the
pool discards the broken connection and serves a working one once the proxy relays again."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from psycopg_pool import ConnectionPool
from rq.timeouts import JobTimeoutException

from alert_worker.resources import JobResources
from alert_worker.settings import Settings
from alert_worker.threaded_worker import DaemonTimerDeathPenalty, open_shared_resources
from tests.support.freezing_proxy import FreezingProxy, freezing_proxy
from tests.support.processes import wait_until
from tests.support.silent_network import database_target

pytestmark = pytest.mark.integration

JOB_TIMEOUT = 3
SEND_TIMEOUT = 2  # statement_timeout 2 s: the server's, it cannot reach a client behind a frozen proxy
MARGIN = 20  # a loaded 2-core machine; without the cut the call waits until the proxy relays again


@pytest.fixture
def proxy(database_url: str) -> Iterator[FreezingProxy]:
    with freezing_proxy(database_target(database_url)) as made:
        yield made


@pytest.fixture
def shared(worker_env: dict[str, str], database_url: str, proxy: FreezingProxy) -> Iterator[JobResources]:
    settings = Settings.from_env(
        {**worker_env, "DATABASE_URL": proxy.dsn(database_url), "ALERT_SEND_TIMEOUT_SECONDS": str(SEND_TIMEOUT)}
    )
    resources = open_shared_resources(settings, threads=2)
    try:
        yield resources
    finally:
        proxy.thaw()  # a blocked thread (the old code) ends, and the pool closes
        resources.close_now()


def _frozen_during_the_query(pool: ConnectionPool, proxy: FreezingProxy) -> None:
    with pool.connection() as conn:
        proxy.freeze()  # the proxy hangs now
        conn.execute("SELECT pg_sleep(0.1)").fetchone()


def _frozen_before_the_pool_checks_a_connection(pool: ConnectionPool, proxy: FreezingProxy) -> None:
    proxy.freeze()  # the pool's check of its idle connection waits on the proxy
    with pool.connection() as conn:
        conn.execute("SELECT 1").fetchone()


@pytest.mark.parametrize(
    ("job", "ends_with"),
    [
        (_frozen_during_the_query, {"JobTimeoutException"}),
        # psycopg_pool takes any Exception raised in its check (RQ's JobTimeoutException is one) for a failed
        # check and gives up at its own deadline, already passed: PoolTimeout at once, unless the timeout's
        # exception reaches the thread after the pool caught the check's error
        (_frozen_before_the_pool_checks_a_connection, {"PoolTimeout", "JobTimeoutException"}),
    ],
    ids=["frozen-during-the-query", "frozen-before-the-pools-check"],
)
def test_a_call_through_a_frozen_proxy_ends_with_the_job_timeout_and_the_pool_recovers(
    shared: JobResources,
    proxy: FreezingProxy,
    job: Callable[[ConnectionPool, FreezingProxy], None],
    ends_with: set[str],
) -> None:
    pool = shared.pool
    with pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            with DaemonTimerDeathPenalty(JOB_TIMEOUT, JobTimeoutException):  # as the threaded worker runs a job
                job(pool, proxy)
            result["end"] = "returned"
        except BaseException as exc:  # what ended the job is the result
            result["end"] = type(exc).__name__

    thread = threading.Thread(target=run, name="frozen-job", daemon=True)
    thread.start()
    wait_until(lambda: not thread.is_alive(), timeout=JOB_TIMEOUT + MARGIN, what="the job on the frozen proxy to end")
    assert result["end"] in ends_with

    proxy.thaw()
    with pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,), "a working connection after the proxy recovers"
    stats = pool.get_stats()
    assert stats.get("returns_bad", 0) + stats.get("connections_lost", 0) >= 1, f"the cut one discarded: {stats}"
