"""Per-job resources are always closed, and no failure hides another (docs/contract.md §1)."""

from __future__ import annotations

from typing import Any

import pytest

from alert_worker.entrypoint import run_delivery_job
from alert_worker.executor import DeliveryRequest
from alert_worker.models import ChannelType
from alert_worker.resources import JobResources
from alert_worker.settings import Settings

SETTINGS = Settings(database_url="postgresql://unused", redis_url="redis://unused")
REQUEST = DeliveryRequest(
    delivery_id="d-1", channel=ChannelType.EMAIL, recipient="a@example.com", subject="s", body="b"
)
RESULT = {"outcome": "delivered"}


class Closable:
    def __init__(self, name: str, log: list[str], error: Exception | None = None) -> None:
        self.name, self.log, self.error = name, log, error

    def close(self) -> None:
        self.log.append(self.name)
        if self.error:
            raise self.error


class Executor:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def run(self, request: DeliveryRequest) -> Any:
        if self.error:
            raise self.error
        return RESULT


def _run(
    pool_error: Exception | None = None,
    redis_error: Exception | None = None,
    delivery_error: BaseException | None = None,
) -> tuple[list[str], Any]:
    closed: list[str] = []
    resources = JobResources(pool=Closable("pool", closed, pool_error), redis=Closable("redis", closed, redis_error))  # type: ignore[arg-type]
    result = run_delivery_job(
        REQUEST,
        settings=SETTINGS,
        open_resources=lambda _: resources,
        make_executor=lambda *_: Executor(delivery_error),
    )
    return closed, result


def test_both_resources_are_closed_after_a_successful_delivery_database_first() -> None:
    closed, result = _run()
    assert result == RESULT
    assert closed == ["pool", "redis"]


def test_both_resources_are_closed_when_the_delivery_raises_and_its_error_propagates_unchanged() -> None:
    """A delivery error with clean closes comes out as itself, not wrapped."""
    closed: list[str] = []
    boom = RuntimeError("postgres went away")
    with pytest.raises(RuntimeError) as caught:
        resources = JobResources(pool=Closable("pool", closed), redis=Closable("redis", closed))  # type: ignore[arg-type]
        run_delivery_job(
            REQUEST, settings=SETTINGS, open_resources=lambda _: resources, make_executor=lambda *_: Executor(boom)
        )
    assert caught.value is boom
    assert closed == ["pool", "redis"]


@pytest.mark.parametrize("failing", ["pool", "redis"], ids=["pool-close-fails", "redis-close-fails"])
def test_a_single_failing_close_raises_that_error_after_closing_the_other(failing: str) -> None:
    error = OSError(f"{failing} close failed")
    kwargs = {"pool_error": error} if failing == "pool" else {"redis_error": error}
    with pytest.raises(OSError) as caught:
        _run(**kwargs)  # type: ignore[arg-type]
    assert caught.value is error


def test_both_closes_failing_raise_an_exception_group_database_first() -> None:
    pool_error, redis_error = OSError("pool"), ConnectionError("redis")
    with pytest.raises(ExceptionGroup) as caught:
        _run(pool_error=pool_error, redis_error=redis_error)
    assert list(caught.value.exceptions) == [pool_error, redis_error]


def test_a_delivery_error_and_a_close_error_are_raised_together_delivery_first() -> None:
    """The close failure never hides the delivery's own exception."""
    delivery_error, redis_error = RuntimeError("send crashed"), ConnectionError("redis close")
    with pytest.raises(ExceptionGroup) as caught:
        _run(redis_error=redis_error, delivery_error=delivery_error)
    assert list(caught.value.exceptions) == [delivery_error, redis_error]


def test_a_base_exception_during_delivery_still_closes_everything() -> None:
    """Even a job-timeout style BaseException (e.g. KeyboardInterrupt) closes the resources."""
    closed: list[str] = []
    resources = JobResources(pool=Closable("pool", closed), redis=Closable("redis", closed))  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        run_delivery_job(
            REQUEST,
            settings=SETTINGS,
            open_resources=lambda _: resources,
            make_executor=lambda *_: Executor(KeyboardInterrupt()),
        )
    assert closed == ["pool", "redis"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", "email", 0), "delivery_id"),
        (("x" * 256, "email", 0), "delivery_id"),
        ((None, "email", 0), "delivery_id"),
        (("d-1", "fax", 0), "channel"),
        (("d-1", None, 0), "channel"),
        (("d-1", "email", -1), "attempt"),
        (("d-1", "email", "1"), "attempt"),
        (("d-1", "email", True), "attempt"),
    ],
    ids=[
        "empty-id",
        "id-too-long",
        "id-not-str",
        "unknown-channel",
        "channel-none",
        "negative-attempt",
        "attempt-str",
        "attempt-bool",
    ],
)
def test_bad_id_channel_or_attempt_raise_value_error_before_any_connection(
    monkeypatch: pytest.MonkeyPatch, args: tuple[Any, Any, Any], message: str
) -> None:
    """ValueError first; no pool, no Redis client is ever built."""
    import psycopg
    import psycopg_pool
    import redis

    from alert_worker.entrypoint import execute_delivery_job

    def forbidden(*_: Any, **__: Any) -> Any:
        raise AssertionError("a connection was opened")

    monkeypatch.setattr(psycopg_pool.ConnectionPool, "__init__", forbidden)
    monkeypatch.setattr(psycopg.Connection, "connect", forbidden)
    monkeypatch.setattr(redis.Redis, "__init__", forbidden)
    monkeypatch.setenv("DATABASE_URL", "postgresql://127.0.0.1:1/none")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    delivery_id, channel, attempt = args
    with pytest.raises(ValueError, match=message):
        execute_delivery_job(delivery_id, channel, "a@example.com", "s", "b", attempt=attempt)
