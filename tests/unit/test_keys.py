"""One Redis key schema: the names CONTRACT §3 and §6 fix, under any prefix, used by every writer."""

from __future__ import annotations

import fakeredis
import pytest

from alert_worker.counters import poison_count, queue_depth
from alert_worker.keys import RedisKeys
from alert_worker.producer import QueueAdmission, QueueFullError
from alert_worker.rate_limit import RateLimiter
from alert_worker.settings import RateLimit


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (RedisKeys().poison_count, "alert:poison:count"),
        (RedisKeys().queue_depth, "alert:queue:depth"),
        (RedisKeys().sweep_lock, "alert:sweep:lock"),
        (RedisKeys().queue_refusing, "alert:queue:refusing"),
        (RedisKeys().worker("w1"), "alert:worker:w1"),
        (RedisKeys().worker_alive("w1"), "alert:worker:w1:alive"),
        (RedisKeys().cooldown("slack", "ab12"), "alert:cooldown:slack:ab12"),
        (RedisKeys().rate_limit_recipient("sms", "ab12"), "alert:rl:recipient:sms:ab12"),
        (RedisKeys("x:").metrics_attempts, "x:metrics:attempts"),
    ],
    ids=["poison", "depth", "sweep-lock", "refusing", "worker", "worker-alive", "cooldown", "rl-recipient", "prefix"],
)
def test_keys_are_spelled_as_the_contract_names_them(key: str, expected: str) -> None:
    """The §3/§6 names, and the prefix in front of every one."""
    assert key == expected


def test_gauges_admission_and_the_rate_limiter_write_the_schemas_keys() -> None:
    """No module spells a key itself: what they write is what RedisKeys says."""
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    keys = RedisKeys("p:")
    poison_count(client, "p:").add(1)
    queue_depth(client, "p:").set(5)
    with pytest.raises(QueueFullError):
        QueueAdmission(client=client, prefix="p:", max_depth=1).check()
    RateLimiter(client=client, key_prefix="p:").acquire("sms", "ab12", [RateLimit("recipient", 1, 3600)])
    written = {k.decode() for k in client.keys("*")}
    assert written == {
        keys.poison_count,
        keys.queue_depth,
        keys.queue_refusing,
        keys.rate_limit_recipient("sms", "ab12"),
    }


def test_the_scheduler_lock_key_the_overview_reads_is_rqs_own() -> None:
    """The operator overview reads RQ's scheduler lock without importing rq: the spelling must match RQ's."""
    from rq.scheduler import RQScheduler

    from alert_worker.liveness import RQ_SCHEDULER_LOCK_KEY

    assert RQ_SCHEDULER_LOCK_KEY.format(queue="alerts") == RQScheduler.get_locking_key("alerts")
