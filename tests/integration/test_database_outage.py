"""docs/contract.md §6.3: a job that cannot reach Postgres before its claim is copied for later, not lost."""

from __future__ import annotations

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.registry import FailedJobRegistry, ScheduledJobRegistry

from alert_worker.job import DB_WAIT_META
from alert_worker.rq_jobs import RqEnqueuer
from tests.support.cli import preserved_logging
from tests.support.smtp import SmtpSink

pytestmark = pytest.mark.integration

CLOSED_PORT_DSN = "postgresql://postgres@127.0.0.1:1/nowhere"


def _work(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], client: redis.Redis) -> None:
    with monkeypatch.context() as patch, preserved_logging():
        for name, value in env.items():
            patch.setenv(name, value)
        SimpleWorker([Queue("alerts", connection=client)], connection=client).work(burst=True)


@pytest.mark.parametrize(
    "secret",
    ["test-secret", ""],
    ids=["claim-cannot-connect", "hash-secret-lookup-cannot-connect"],
)
def test_a_producer_job_with_no_row_survives_a_postgres_outage_and_is_delivered_once_it_is_back(
    worker_env: dict[str, str],
    redis_client: redis.Redis,
    smtp_sink: SmtpSink,
    monkeypatch: pytest.MonkeyPatch,
    secret: str,
) -> None:
    """The job fails (RQ records it), a copy with the same arguments waits in the scheduled registry, and
    once Postgres answers the copy delivers the alert."""
    RqEnqueuer(connection=redis_client).enqueue_now(
        queue="alerts",
        delivery_id="outage-1",
        channel="email",
        payload={"recipient": "ops@example.com", "subject": "Disk", "body": "full"},
        attempt=0,
        suffix="send",
    )
    env = {**worker_env, "ALERT_RECIPIENT_HASH_SECRET": secret}  # "": the secret is looked up in Postgres
    down = {**env, "DATABASE_URL": CLOSED_PORT_DSN, "ALERT_SEND_TIMEOUT_SECONDS": "0.5"}
    _work(monkeypatch, down, redis_client)

    assert FailedJobRegistry("alerts", connection=redis_client).get_job_ids() == ["alert-outage-1-send"]
    scheduled = ScheduledJobRegistry("alerts", connection=redis_client)
    [copy_id] = scheduled.get_job_ids()
    assert copy_id.startswith("alert-outage-1-dbwait-") and copy_id.endswith("-1")
    queue = Queue("alerts", connection=redis_client)
    copy = queue.fetch_job(copy_id)
    assert copy is not None
    assert copy.args == ("outage-1", "email", "ops@example.com", "Disk", "full")
    assert copy.kwargs == {"attempt": 0}, "no attempt counted"
    assert copy.meta[DB_WAIT_META]["copies"] == 1

    scheduled.remove(copy)
    queue.enqueue_job(copy)  # what RQ's scheduler does when the delay is over
    _work(monkeypatch, env, redis_client)
    assert len(smtp_sink.messages_to("ops@example.com")) == 1
