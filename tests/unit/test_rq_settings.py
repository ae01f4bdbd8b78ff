"""``alert_worker.rq_settings``: rq's job lines lose the job description; the rq formats are pinned."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import fakeredis
import pytest
from rq import Queue, SimpleWorker

from alert_worker.rq_settings import DropJobDescription


def noop() -> None:
    """A job that does nothing."""


@pytest.fixture
def rq_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    logger = logging.getLogger("rq.worker")
    propagate = logger.propagate
    logger.addFilter(flt := DropJobDescription())
    caplog.set_level(logging.INFO, logger="rq.worker")
    logger.propagate = True
    yield caplog
    logger.removeFilter(flt)
    logger.propagate = propagate


def test_rqs_job_lines_never_show_the_description_even_with_description_logging_on(
    rq_log: pytest.LogCaptureFixture,
) -> None:
    """A producer's description (here holding a recipient) stays out of rq's dequeue and completion lines;
    the job id is still logged. Fails if rq changes those two message formats."""
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    queue = Queue("alerts", connection=conn)
    job = queue.enqueue(noop, description="to ops@example.com")
    SimpleWorker([queue], connection=conn, log_job_description=True).work(burst=True)
    text = "\n".join(r.getMessage() for r in rq_log.records)
    assert "ops@example.com" not in text
    assert job.id in text
    assert "Successfully completed a job" in text


def test_other_records_pass_the_filter_unchanged() -> None:
    """The filter rewrites only rq's two job lines."""
    record = logging.LogRecord("rq.worker", logging.INFO, __file__, 1, "Worker %s: started", ("w",), None)
    assert DropJobDescription().filter(record) and record.getMessage() == "Worker w: started"
