"""Best-effort side effects swallow store failures, never a job timeout (it must end the delivery)."""

from __future__ import annotations

from typing import Any, cast

import pytest
import redis
from rq.timeouts import JobTimeoutException

from alert_worker.metrics import RedisMetrics


class _Pipeline:
    def __init__(self, error: Exception) -> None:
        self._error = error

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None

    def execute(self) -> None:
        raise self._error


class _Client:
    def __init__(self, error: Exception) -> None:
        self._error = error

    def pipeline(self, transaction: bool = True) -> _Pipeline:
        return _Pipeline(self._error)


@pytest.mark.parametrize(
    "error",
    [redis.ConnectionError("down"), redis.TimeoutError("slow"), OSError("reset")],
    ids=["redis-connection", "redis-timeout", "socket"],
)
def test_a_metric_write_that_fails_on_the_store_is_logged_not_raised(error: Exception) -> None:
    """Redis down or slow: the delivery goes on without its metric."""
    RedisMetrics(client=cast(redis.Redis, _Client(error))).attempt("email", "delivered")


def test_a_job_timeout_raised_during_a_metric_write_ends_the_delivery() -> None:
    """RQ's death penalty raises inside whatever runs; a metric write must not swallow it."""
    with pytest.raises(JobTimeoutException):
        RedisMetrics(client=cast(redis.Redis, _Client(JobTimeoutException("timeout")))).attempt("email", "delivered")
