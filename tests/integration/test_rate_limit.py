"""The rolling-window limiter: one contract, checked on fakeredis and on the real Redis alike."""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Callable, Iterator

import fakeredis
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alert_worker.errors import RateLimiterUnavailableError
from alert_worker.rate_limit import Acquisition, RateLimiter
from alert_worker.settings import RateLimit

MakeLimiter = Callable[[Callable[[], float] | None], RateLimiter]


@pytest.fixture(params=["fakeredis", "real-redis"])
def make_limiter(request: pytest.FixtureRequest) -> Iterator[MakeLimiter]:
    """The same tests run against fakeredis[lua] and the real server (its own locked db)."""
    if request.param == "fakeredis":
        client: redis.Redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    else:
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))

    def make(clock: Callable[[], float] | None) -> RateLimiter:
        return RateLimiter(client=client, key_prefix=f"t{uuid.uuid4().hex[:8]}:", clock=clock)

    yield make
    client.close()


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_sends_up_to_the_limit_are_allowed_and_the_next_is_denied_with_the_wait(make_limiter: MakeLimiter) -> None:
    clock = Clock()
    limiter = make_limiter(clock)
    limits = [RateLimit("channel", 3, 60)]
    for step in range(3):
        clock.now = 1000.0 + step
        assert limiter.acquire("email", "h1", limits).allowed
    clock.now = 1010.0
    denied = limiter.acquire("email", "h1", limits)
    assert not denied.allowed and denied.limit_name == "channel"
    assert denied.wait_seconds == pytest.approx(50.0, abs=0.002), "the oldest send (t=1000) leaves the window at 1060"
    clock.now = 1060.0
    assert not limiter.acquire("email", "h1", limits).allowed, "a window is closed: t=1000 still counts at 1060"
    clock.now = 1060.001
    assert limiter.acquire("email", "h1", limits).allowed


def test_a_denied_check_consumes_nothing_in_any_limit(make_limiter: MakeLimiter) -> None:
    """Recipient full, channel not: the denial must not eat a channel slot."""
    clock = Clock()
    limiter = make_limiter(clock)
    tight = [RateLimit("channel", 2, 60), RateLimit("recipient", 1, 3600)]
    assert limiter.acquire("sms", "alice", tight).allowed
    for _ in range(5):
        assert limiter.acquire("sms", "alice", tight).limit_name == "recipient"
    assert limiter.acquire("sms", "bob", tight).allowed, "the channel still has its second slot"
    assert limiter.acquire("sms", "carol", tight).limit_name == "channel"


def test_the_wait_is_for_the_tightest_limit(make_limiter: MakeLimiter) -> None:
    clock = Clock()
    limiter = make_limiter(clock)
    limits = [RateLimit("channel", 1, 60), RateLimit("recipient", 1, 3600), RateLimit("global", 1, 60)]
    assert limiter.acquire("email", "h", limits).allowed
    denied = limiter.acquire("email", "h", limits)
    assert denied.limit_name == "recipient" and denied.wait_seconds == pytest.approx(3600.0, abs=0.002)


def test_a_release_gives_back_exactly_the_slots_of_its_own_check_in_every_limit(make_limiter: MakeLimiter) -> None:
    """Three checks at the same instant; releasing the second frees one slot in each of its limits, no more."""
    clock = Clock()
    limiter = make_limiter(clock)
    limits = [RateLimit("channel", 3, 60), RateLimit("recipient", 3, 3600), RateLimit("global", 3, 60)]
    taken = [limiter.acquire("sms", "alice", limits) for _ in range(3)]
    assert all(d.allowed and d.acquisition is not None for d in taken)
    assert limiter.acquire("sms", "alice", limits).limit_name is not None, "full in every limit"
    acquisition = taken[1].acquisition
    assert acquisition is not None and len(acquisition.keys) == 3
    assert limiter.release(acquisition) == 3
    assert limiter.release(acquisition) == 0, "idempotent: a second release takes nothing of the others"
    assert limiter.acquire("sms", "alice", limits).allowed, "the released slot is free again"
    assert not limiter.acquire("sms", "alice", limits).allowed, "and only that one"


def test_a_release_frees_the_channel_and_global_slots_for_other_recipients_too(make_limiter: MakeLimiter) -> None:
    clock = Clock()
    limiter = make_limiter(clock)
    limits = [RateLimit("channel", 1, 60), RateLimit("recipient", 5, 3600), RateLimit("global", 1, 60)]
    first = limiter.acquire("sms", "alice", limits)
    assert first.acquisition is not None and not limiter.acquire("sms", "bob", limits).allowed
    limiter.release(first.acquisition)
    assert limiter.acquire("sms", "bob", limits).allowed


def test_a_release_when_redis_cannot_be_asked_raises_unavailable() -> None:
    limiter = RateLimiter(client=redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5))
    with pytest.raises(RateLimiterUnavailableError):
        limiter.release(Acquisition(keys=("alert:rl:x",), member="m"))


def test_a_zero_limit_is_disabled(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(Clock())
    assert all(limiter.acquire("email", "h", [RateLimit("channel", 0, 60)]).allowed for _ in range(50))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=30.0, allow_nan=False), min_size=1, max_size=60),
    limit=st.integers(min_value=1, max_value=5),
)
def test_no_rolling_window_ever_holds_more_sends_than_the_limit(
    make_limiter: MakeLimiter, gaps: list[float], limit: int
) -> None:
    """Property: for every allowed send at t, the closed window [t, t+W] holds at most `limit` sends."""
    window = 60
    clock = Clock()
    limiter = make_limiter(clock)
    allowed: list[float] = []
    for gap in gaps:
        clock.now = round(clock.now + gap, 3)
        if limiter.acquire("slack", "h", [RateLimit("channel", limit, window)]).allowed:
            allowed.append(clock.now)
    for start in allowed:
        assert sum(1 for t in allowed if start <= t <= start + window) <= limit
    # and it is not simply refusing everything: the first send is always allowed
    assert allowed and allowed[0] == round(1000.0 + gaps[0], 3)


def test_redis_errors_deny_by_raising_unavailable() -> None:
    """Fail closed: no answer from Redis is never an allowance."""
    limiter = RateLimiter(client=redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5))
    with pytest.raises(RateLimiterUnavailableError):
        limiter.acquire("sms", "h", [RateLimit("channel", 10, 60)])


def _hammer(
    url: str, prefix: str, attempts: int, barrier: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    limiter = RateLimiter(client=redis.Redis.from_url(url), key_prefix=prefix)
    barrier.wait()
    out.put(sum(limiter.acquire("sms", "h", [RateLimit("channel", 25, 60)]).allowed for _ in range(attempts)))


def test_two_processes_sharing_one_limit_never_exceed_it_together(redis_url: str) -> None:
    """Atomic across workers: two processes race 40 attempts each against a limit of 25."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    procs = [ctx.Process(target=_hammer, args=(redis_url, prefix, 40, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    totals = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert sum(totals) == 25
