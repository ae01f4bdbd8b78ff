"""``ALERT_RESOURCE_SCOPE``: per-job resources leave nothing behind; process scope reuses, replaces, forks safely."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

from alert_worker import execute_delivery_job
from alert_worker.entrypoint import run_delivery_job
from alert_worker.executor import DeliveryRequest
from alert_worker.models import ChannelType
from alert_worker.resources import (
    JobResources,
    close_process_resources,
    open_resources_for,
    process_resources,
)
from alert_worker.settings import Settings
from tests.conftest import ADMIN_DSN
from tests.support.smtp import SmtpSink


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str]) -> Iterator[None]:
    for key, value in worker_env.items():
        monkeypatch.setenv(key, value)
    for limit in ("EMAIL_PER_MIN", "EMAIL_PER_RECIPIENT_HOUR", "GLOBAL_PER_MIN"):  # 50 sends to one address
        monkeypatch.setenv(f"ALERT_RATE_{limit}", "0")
    yield
    close_process_resources()


@pytest.fixture
def process_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERT_RESOURCE_SCOPE", "process")


def _deliver(delivery_id: str) -> dict[str, object]:
    return dict(execute_delivery_job(delivery_id, "email", "ops@example.com", f"subject {delivery_id}", "body"))


def _backends(database_url: str) -> list[int]:
    """Client backends connected to this test's database, seen from an admin connection."""
    name = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'", (name,)
        ).fetchall()
    return [r[0] for r in rows]


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.mark.integration
def test_job_scope_is_the_default_and_leaves_no_connection_or_thread_after_50_jobs(
    database_url: str, smtp_sink: SmtpSink
) -> None:
    """50 jobs in one process: every pool closed, no backend and no pool thread left behind."""
    assert Settings.from_env().resource_scope == "job"
    threads_before = threading.active_count()
    for i in range(50):
        assert _deliver(f"job-{i}")["outcome"] == "delivered"
    assert len(smtp_sink.accepted) == 50
    assert _eventually(lambda: _backends(database_url) == []), "a per-job pool leaked a connection"
    assert threading.active_count() == threads_before, "a per-job pool left a thread running"


@pytest.mark.integration
@pytest.mark.usefixtures("process_scope")
def test_process_scope_reuses_one_pool_and_client_across_jobs(database_url: str, smtp_sink: SmtpSink) -> None:
    """Three jobs in one process share one pool, one Redis client and one database connection."""
    settings = Settings.from_env()
    assert _deliver("p-1")["outcome"] == "delivered"
    shared = process_resources(settings)
    backend = _backends(database_url)
    for delivery_id in ("p-2", "p-3"):
        assert _deliver(delivery_id)["outcome"] == "delivered"
        assert process_resources(settings) is shared
    assert _backends(database_url) == backend and len(backend) == 1
    assert not shared.pool.closed, "a job must not close the process's pool"
    assert len(smtp_sink.accepted) == 3


@pytest.mark.integration
@pytest.mark.usefixtures("process_scope")
def test_process_scope_closes_its_resources_at_shutdown(database_url: str) -> None:
    """close_process_resources (registered with atexit) closes the pool; the next job opens a new one."""
    settings = Settings.from_env()
    _deliver("s-1")
    first = process_resources(settings)
    assert close_process_resources() == []
    assert first.pool.closed
    assert _eventually(lambda: _backends(database_url) == [])
    assert _deliver("s-2")["outcome"] == "delivered"
    assert process_resources(settings) is not first


@pytest.mark.integration
@pytest.mark.usefixtures("process_scope")
def test_process_scope_replaces_connections_the_database_terminated(database_url: str, smtp_sink: SmtpSink) -> None:
    """As after a Postgres restart: the pooled connection is killed; the next job still delivers."""
    settings = Settings.from_env()
    assert _deliver("r-1")["outcome"] == "delivered"
    shared = process_resources(settings)
    [old] = _backends(database_url)
    name = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
    assert _eventually(lambda: old not in _backends(database_url))

    assert _deliver("r-2")["outcome"] == "delivered"
    assert process_resources(settings) is shared, "the pool is kept; only its broken connection is replaced"
    assert old not in _backends(database_url)
    assert len(smtp_sink.accepted) == 2


@pytest.mark.integration
@pytest.mark.usefixtures("process_scope")
def test_process_scope_reconnects_a_killed_redis_connection(redis_url: str, smtp_sink: SmtpSink) -> None:
    """The shared Redis client's connection is killed server-side; the next job's Redis work still succeeds."""
    settings = Settings.from_env()
    _deliver("k-1")
    client = process_resources(settings).redis
    own_id = client.client_id()
    with redis.Redis.from_url(redis_url) as admin:
        assert admin.client_kill_filter(_id=own_id) == 1
    assert _deliver("k-2")["outcome"] == "delivered"
    assert client.client_id() != own_id
    assert len(smtp_sink.accepted) == 2


@pytest.mark.integration
@pytest.mark.usefixtures("process_scope")
def test_a_forked_process_gets_its_own_pool_and_leaves_the_parents_alone(
    database_url: str, smtp_sink: SmtpSink
) -> None:
    """After fork() the child builds new resources (keyed by pid); the parent's pool still works."""
    settings = Settings.from_env()
    _deliver("f-parent-1")
    parent = process_resources(settings)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: deliver on its own pool, report, leave like an RQ work-horse (os._exit)
        code = 1
        try:
            ok = _deliver("f-child")["outcome"] == "delivered" and process_resources(settings) is not parent
            os.write(write_end, b"ok" if ok else b"no")
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read_end, 16)
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0 and answer == b"ok"
    assert _deliver("f-parent-2")["outcome"] == "delivered", "the child must not have closed the parent's pool"
    assert process_resources(settings) is parent
    assert len(smtp_sink.accepted) == 3


class _Closable:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


@pytest.mark.parametrize("raises", [False, True], ids=["delivered", "delivery-raised"])
def test_a_job_never_closes_process_scoped_resources(raises: bool) -> None:
    """Cleanup rules: process-scoped resources survive the job whether it returns or raises."""
    pool, client = _Closable(), _Closable()
    resources = JobResources(pool=pool, redis=client, owned=False)  # type: ignore[arg-type]

    class Executor:
        def run(self, request: DeliveryRequest) -> dict[str, object]:
            if raises:
                raise RuntimeError("boom")
            return {"outcome": "delivered"}

    request = DeliveryRequest(delivery_id="c-1", channel=ChannelType.EMAIL, recipient="a@b.c", subject="s", body="b")
    settings = Settings(database_url="", redis_url="", resource_scope="process")
    call = lambda: run_delivery_job(  # noqa: E731
        request, settings=settings, open_resources=lambda _: resources, make_executor=lambda *_: Executor()
    )
    if raises:
        with pytest.raises(RuntimeError, match="boom"):
            call()
    else:
        call()
    assert (pool.closed, client.closed) == (0, 0)
    assert resources.close_now() == [] and (pool.closed, client.closed) == (1, 1)


def test_the_scope_setting_picks_the_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    """job: owned per-job resources; process: the shared, not-owned set."""
    job = open_resources_for(Settings.from_env())
    try:
        assert job.owned
    finally:
        assert job.close() == []
    monkeypatch.setenv("ALERT_RESOURCE_SCOPE", "process")
    shared = open_resources_for(Settings.from_env())
    assert not shared.owned and shared.close() == [] and not shared.pool.closed
