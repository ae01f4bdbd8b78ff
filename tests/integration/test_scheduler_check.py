"""``alert-worker check`` and the scheduler lock (docs/contract.md §7.5): exit 1 once no scheduler has held a
configured queue's lock for 60 s, timed from the absence's first sighting (by a worker or by check)."""

from __future__ import annotations

import json

import pytest
import redis

from alert_worker.keys import RedisKeys
from tests.support.cli import InProcessCli

pytestmark = pytest.mark.integration

MISSING_SINCE = RedisKeys("alert:").scheduler_missing_since("alerts")


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], worker_env: dict[str, str]
) -> InProcessCli:
    return InProcessCli(monkeypatch, capsys, worker_env)


def _server_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + micros / 1e6


def test_a_first_sighting_of_no_scheduler_is_a_warning_and_starts_the_clock(
    cli: InProcessCli, redis_client: redis.Redis
) -> None:
    result = cli("check", "--json")
    assert result.code == 0
    assert json.loads(result.out)["scheduler_missing"] == {}
    assert redis_client.exists(MISSING_SINCE)


@pytest.mark.parametrize(("missing_for", "code"), [(50, 0), (61, 1)], ids=["50s-still-ok", "61s-fails"])
def test_check_fails_once_no_scheduler_has_held_the_lock_for_60_seconds(
    cli: InProcessCli, redis_client: redis.Redis, missing_for: int, code: int
) -> None:
    redis_client.set(MISSING_SINCE, _server_now(redis_client) - missing_for)
    result = cli("check")
    assert result.code == code, result.out
    assert result.last_line == ("ok" if code == 0 else "FAILED")
    assert any("no RQ scheduler has held the lock for queue 'alerts'" in line for line in result.out.splitlines())


def test_a_scheduler_holding_the_lock_again_clears_the_clock(cli: InProcessCli, redis_client: redis.Redis) -> None:
    redis_client.set(MISSING_SINCE, _server_now(redis_client) - 600)
    redis_client.set("rq:scheduler-lock:alerts", "scheduler-1", ex=60)
    result = cli("check", "--json")
    assert result.code == 0 and json.loads(result.out)["scheduler"] == {"alerts": True}
    assert not redis_client.exists(MISSING_SINCE)
