"""Rolling-window rate limits shared by every worker: one atomic Lua script checks them all.

Each limit is a sliding log (a sorted set of send times). A send is allowed only if every limit has room
in the window that ends now, counted inclusively, so no closed window of ``window_seconds`` ever holds more
than ``limit`` sends. A denial records nothing and returns how long until the tightest limit frees a slot.
Redis errors deny: an alert worker that cannot count must not send unbounded SMS (fail closed).

Every allowed check adds one member, unique to that check, to each of its limits; ``release`` removes
exactly those entries again, atomically. The executor releases a check whose send the provider definitely
refused or never received (docs/contract.md §7.2), in every limit the check took: per channel, per recipient
and global alike, since that send used nothing of the provider. An unknown outcome keeps its slots.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from alert_worker.errors import DeliveryError, RateLimiterUnavailableError
from alert_worker.keys import RedisKeys
from alert_worker.settings import RateLimit

# KEYS: one sorted set per limit. ARGV: now (seconds, float; < 0 = use Redis TIME), member, then
# (limit, window_seconds) per key. Returns {1} when allowed, {0, wait_ms, index_of_tightest_limit} when not.
_SCRIPT = """
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local stamp = string.format('%.6f', now)
local member = ARGV[2]
local wait, tightest = 0, 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%.6f', now - window))
  local count = redis.call('ZCARD', key)
  if count >= limit then
    local freeing = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
    -- the entry leaves the window strictly after score + window; never report a zero wait
    local until_free = math.max(tonumber(freeing[2]) + window - now, 0.001)
    if tightest == 0 or until_free > wait then wait, tightest = until_free, i end
  end
end
if tightest > 0 then
  return {0, math.ceil(wait * 1000), tightest}
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, stamp, member)
  redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[2 + 2 * i]) * 1000) + 1000)
end
return {1}
"""

# KEYS: the limits one allowed check took a slot in. ARGV[1]: that check's member. Returns entries removed.
_RELEASE = """
local removed = 0
for _, key in ipairs(KEYS) do
  removed = removed + redis.call('ZREM', key, ARGV[1])
end
return removed
"""


@dataclass(frozen=True)
class Acquisition:
    """The slots one allowed check took: its member in each limit's sorted set."""

    keys: tuple[str, ...]
    member: str


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    wait_seconds: float = 0.0
    limit_name: str | None = None  # which limit denied
    acquisition: Acquisition | None = None  # what an allowed check took (None: no limit was enabled)


class RateLimiter:
    """Checks and consumes the channel, recipient and global limits of one send, atomically."""

    def __init__(
        self,
        *,
        client: redis.Redis,
        key_prefix: str = "alert:",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._client = client
        self._keys = RedisKeys(key_prefix)
        self._clock = clock  # None: use the Redis server's clock, shared by every worker
        self._script = client.register_script(_SCRIPT)
        self._release = client.register_script(_RELEASE)

    def _key(self, limit: RateLimit, channel: str, recipient_hash: str) -> str:
        if limit.name == "channel":
            return self._keys.rate_limit_channel(channel)
        if limit.name == "recipient":
            return self._keys.rate_limit_recipient(channel, recipient_hash)
        return self._keys.rate_limit(limit.name)

    def acquire(self, channel: str, recipient_hash: str, limits: Sequence[RateLimit]) -> RateDecision:
        """Take one slot in every enabled limit, or none; raises ``RateLimiterUnavailableError``."""
        active = [limit for limit in limits if limit.limit > 0]
        if not active:
            return RateDecision(allowed=True)
        keys = [self._key(limit, channel, recipient_hash) for limit in active]
        member = uuid.uuid4().hex
        args: list[float | str | int] = [self._clock() if self._clock else -1, member]
        for limit in active:
            args += [limit.limit, limit.window_seconds]
        try:
            answer = self._script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise RateLimiterUnavailableError(f"rate limiter unavailable: {type(exc).__name__}") from exc
        if int(answer[0]) == 1:
            return RateDecision(allowed=True, acquisition=Acquisition(keys=tuple(keys), member=member))
        return RateDecision(
            allowed=False, wait_seconds=int(answer[1]) / 1000.0, limit_name=active[int(answer[2]) - 1].name
        )

    def release(self, acquisition: Acquisition) -> int:
        """Give back exactly the slots of one allowed check (none of any other); returns entries removed.

        Idempotent. Raises ``RateLimiterUnavailableError`` when Redis cannot be asked: the slots stay taken.
        """
        try:
            return int(self._release(keys=list(acquisition.keys), args=[acquisition.member]))
        except redis.RedisError as exc:
            raise RateLimiterUnavailableError(f"rate limiter unavailable: {type(exc).__name__}") from exc

    def after_failure(self, decision: RateDecision, error: DeliveryError, *, log: Any) -> None:
        """A send failed: a definite failure (``error.definite``) gives its check's slots back; never raises."""
        if not error.definite or decision.acquisition is None:
            return  # the provider may have it: the send counts
        try:
            self.release(decision.acquisition)
        except RateLimiterUnavailableError as exc:  # the slots stay taken and leave the window in time
            log.warning("rate_limit_slots_kept", error=str(exc))
        else:
            log.info("rate_limit_slots_released", reason=error.reason)
