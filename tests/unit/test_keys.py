"""One Redis key schema: the names docs/contract.md §3 and §6 fix, under any prefix, used by every writer."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

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
        (RedisKeys().metrics_deferrals, "alert:metrics:deferrals"),
        (RedisKeys().metrics_retries, "alert:metrics:retries"),
        (RedisKeys().metrics_suppressed, "alert:metrics:suppressed"),
        (RedisKeys().metrics_unknown_outcomes, "alert:metrics:unknown_outcomes"),
        (RedisKeys().metrics_latency_buckets, "alert:metrics:latency:buckets"),
        (RedisKeys().metrics_latency_sum, "alert:metrics:latency:sum"),
        (RedisKeys().workers_pattern, "alert:worker:*"),
        (RedisKeys().cooldowns_pattern, "alert:cooldown:*"),
    ],
    ids=[
        "poison",
        "depth",
        "sweep-lock",
        "refusing",
        "worker",
        "worker-alive",
        "cooldown",
        "rl-recipient",
        "prefix",
        "metrics-deferrals",
        "metrics-retries",
        "metrics-suppressed",
        "metrics-unknown-outcomes",
        "metrics-latency-buckets",
        "metrics-latency-sum",
        "workers-pattern",
        "cooldowns-pattern",
    ],
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


@pytest.mark.parametrize(
    ("key", "name"),
    [("p:worker:w1", "w1"), ("p:worker:w1:alive", None), ("p:workers", None), ("q:worker:w1", None)],
    ids=["registration", "alive-key", "other-key", "other-prefix"],
)
def test_a_worker_name_is_read_only_from_a_registration_key(key: str, name: str | None) -> None:
    """The overview lists workers by their registration hash, never by an alive key or a foreign prefix."""
    assert RedisKeys("p:").worker_name(key) == name


def test_the_scheduler_lock_key_the_overview_reads_is_rqs_own() -> None:
    """The operator overview reads RQ's scheduler lock without importing rq: the spelling must match RQ's."""
    from rq.scheduler import RQScheduler

    from alert_worker.liveness import RQ_SCHEDULER_LOCK_KEY

    assert RQ_SCHEDULER_LOCK_KEY.format(queue="alerts") == RQScheduler.get_locking_key("alerts")


# A key segment and its colon, as a key is spelled (``worker:`` then more key, or the end of the literal);
# display text such as ``"poison: 3"`` has a space after the colon and is not a key.
KEY_SEGMENT = re.compile(r"\b(?:worker|metrics|cooldown|rl|queue|sweep|poison|pending|scheduler-lock):(?=\S|$)")
PACKAGE = Path(__file__).resolve().parents[2] / "alert_worker"


def _string_literals(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every string constant, f-string parts included, except docstrings (they may name a key in prose)."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def _key_spellings_outside_keys_py() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "keys.py" and path.parent == PACKAGE:
            continue
        for line, text in _string_literals(ast.parse(path.read_text())):
            if KEY_SEGMENT.search(text):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}")
    return found


@pytest.mark.parametrize(
    ("literal", "is_key"),
    [("worker:", True), ("metrics:attempts", True), ("rq:scheduler-lock:{queue}", True), ("poison: ", False)],
    ids=["f-string-part", "whole-key", "rq-key", "display-text"],
)
def test_the_key_pattern_tells_a_key_from_display_text(literal: str, is_key: bool) -> None:
    """The check below would miss keys, or flag prose, if this pattern were wrong."""
    assert bool(KEY_SEGMENT.search(literal)) is is_key


def test_no_package_module_outside_keys_py_spells_a_redis_key() -> None:
    """Every key goes through ``RedisKeys`` (or keys.py's RQ constants): one schema, one spelling."""
    assert _key_spellings_outside_keys_py() == []
