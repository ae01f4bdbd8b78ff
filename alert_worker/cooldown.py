"""Fleet-wide cooldowns: after a provider says "slow down" for a destination, no worker sends to it.

One Redis key per destination, ``<prefix>cooldown:<channel>:<destination hash>``, whose TTL is the
provider's ``Retry-After`` (else ``ALERT_COOLDOWN_SECONDS``). A second "slow down" never shortens a
running cooldown. The destination (webhook URL, Twilio account + sender, SMTP host:port) is normalized as
a recipient is and hashed with the recipient-hash secret, so a key never shows a webhook path. Redis
errors are logged and read as "not cooling": the rate limiter asked right after fails closed on the same
outage.

Channel pauses (``ChannelPauses``, docs/contract.md §7.7) are the same idea one level up: the provider
refused the channel's own settings, so the whole channel waits, not one destination.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis
import structlog

from alert_worker.keys import DEFAULT_PREFIX, RedisKeys
from alert_worker.models import ChannelType
from alert_worker.redaction import mask_recipient, mask_tail, recipient_hash
from alert_worker.validation import normalize_recipient

log = structlog.get_logger("alert_worker.cooldown")

# Start a cooldown, or lengthen one that would end sooner; never shorten it. ARGV[1] = milliseconds.
_START = """
local ttl = redis.call('PTTL', KEYS[1])
local ms = tonumber(ARGV[1])
if ttl < ms then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ms)
  return ms
end
return ttl
"""


def destination_hash(secret: str, channel: str, destination: str) -> str:
    """The keyed hash of the destination normalized like a recipient (docs/contract.md §6.2, §7.2).

    The key names the destination without revealing it, and ``URL``, ``URL?x=1``, ``URL#frag`` and
    ``HTTPS://HOST/path`` are one webhook: they cool together.
    """
    return recipient_hash(secret, channel, normalize_recipient(ChannelType(channel), destination))


def mask_destination(channel: str, destination: str) -> str:
    """What ``cooldown list`` shows of a destination (stored as the key's value): the webhook's host, the
    SMTP server, the Twilio account's and sender's last four characters; never a webhook path or SID."""
    normalized = normalize_recipient(ChannelType(channel), destination)
    if channel == ChannelType.SLACK.value:
        return mask_recipient(ChannelType.SLACK, normalized)
    if channel == ChannelType.SMS.value:
        account, _, sender = normalized.partition(":")
        return f"account {mask_tail(account)} from {mask_tail(sender)}"
    return normalized  # e-mail: the SMTP host:port, a setting and no secret


@dataclass(frozen=True)
class ActiveCooldown:
    channel: str
    destination_hash: str
    destination: str  # masked; "-" for a key written before the mask was stored
    remaining_seconds: float

    def as_json(self) -> dict[str, object]:
        return {
            "channel": self.channel,
            "destination_hash": self.destination_hash,
            "destination": self.destination,
            "remaining_seconds": self.remaining_seconds,
        }


class Cooldowns:
    """Start and read cooldowns in Redis; shared by every worker on the same prefix."""

    def __init__(
        self,
        *,
        client: redis.Redis,
        key_prefix: str = DEFAULT_PREFIX,
        default_seconds: float = 30.0,
        max_seconds: float = 3600.0,
    ) -> None:
        self._client = client
        self._keys = RedisKeys(key_prefix)
        self._default = default_seconds
        self._max = max(max_seconds, default_seconds)
        self._start = client.register_script(_START)

    def key(self, channel: str, dest_hash: str) -> str:
        return self._keys.cooldown(channel, dest_hash)

    def pattern(self) -> str:
        """For operators counting active cooldowns (``SCAN MATCH``)."""
        return self._keys.cooldowns_pattern

    def start(self, channel: str, dest_hash: str, retry_after: float | None, *, shown: str = "-") -> float:
        """Cool the destination for ``retry_after`` (else the default) seconds, capped; returns the TTL set.
        ``shown`` (``mask_destination``) is stored as the key's value for ``cooldown list``."""
        seconds = self._default if retry_after is None or retry_after <= 0 else min(retry_after, self._max)
        ms = max(1, math.ceil(seconds * 1000))
        try:
            ttl = int(self._start(keys=[self.key(channel, dest_hash)], args=[ms, shown]))
        except redis.RedisError as exc:
            log.error("cooldown_not_started", channel=channel, destination_hash=dest_hash, error=type(exc).__name__)
            return 0.0
        return ttl / 1000.0

    def remaining(self, channel: str, dest_hash: str) -> float:
        """Seconds until the destination may be sent to again; 0 when it is not cooling."""
        try:
            ttl = int(self._client.pttl(self.key(channel, dest_hash)))
        except redis.RedisError as exc:
            log.warning("cooldown_unreadable", channel=channel, destination_hash=dest_hash, error=type(exc).__name__)
            return 0.0
        return ttl / 1000.0 if ttl > 0 else 0.0

    def count(self) -> int:
        """Active cooldowns (for ``status``); a SCAN, fine for the handful that exist at once."""
        return sum(1 for _ in self._client.scan_iter(match=self.pattern(), count=500))

    def active(self, channel: str | None = None) -> list[ActiveCooldown]:
        """Every running cooldown (optionally of one channel), longest first; ``SCAN``, never ``KEYS``."""
        keys = [
            k.decode() if isinstance(k, bytes) else str(k)
            for k in self._client.scan_iter(match=self.pattern(), count=500)
        ]
        parts = [(key, self._keys.cooldown_parts(key)) for key in keys]
        found = [(key, p) for key, p in parts if p is not None and (channel is None or p[0] == channel)]
        if not found:
            return []
        pipe = self._client.pipeline(transaction=False)
        for key, _ in found:
            pipe.get(key)
            pipe.pttl(key)
        replies = pipe.execute()
        cooling = []
        for i, (_, (chan, dest_hash)) in enumerate(found):
            value, ttl = replies[2 * i], replies[2 * i + 1]
            if value is None or int(ttl) <= 0:  # expired between the SCAN and now
                continue
            shown = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            cooling.append(ActiveCooldown(chan, dest_hash, "-" if shown in ("1", "") else shown, int(ttl) / 1000.0))
        return sorted(cooling, key=lambda c: -c.remaining_seconds)

    def clear(self, channel: str, dest_hashes: list[str]) -> int:
        """End these cooldowns now; how many were running."""
        if not dest_hashes:
            return 0
        return int(self._client.delete(*(self.key(channel, h) for h in dest_hashes)))

PROBE_SECONDS = 60.0  # one try of a paused channel's settings at a time; a probe that never tried frees it after this


class ChannelPauses:
    """Channels paused fleet-wide because the provider refused their own settings (docs/contract.md §7.7).

    ``<prefix>paused:<channel>`` holds the reason for ``pause_seconds`` (``ALERT_CHANNEL_PAUSE_SECONDS``):
    while it exists no worker sends on the channel, so no thread starts another login with settings the
    provider refused. When it expires, a probation (``pause_probation``, one more period) lets exactly one
    delivery try again (``pause_probe``, ``SET NX``); the others wait for its answer. Accepted: the
    probation is lifted and every waiting delivery flows. Refused: the channel is paused for another
    period. So one delivery per pause period tries the settings. Redis errors are logged and read as
    "not paused" (the rate limiter asked right after fails closed on the same outage).
    """

    def __init__(self, *, client: redis.Redis, key_prefix: str = DEFAULT_PREFIX, pause_seconds: float = 300.0) -> None:
        self._client = client
        self._keys = RedisKeys(key_prefix)
        self.pause_seconds = pause_seconds

    def pause(self, channel: str, reason: str) -> float:
        """Pause ``channel`` for ``pause_seconds`` from now (a later refusal restarts the period)."""
        ms = max(1, math.ceil(self.pause_seconds * 1000))
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.set(self._keys.paused(channel), reason, px=ms)
            pipe.set(self._keys.pause_probation(channel), reason, px=2 * ms)
            pipe.delete(self._keys.pause_probe(channel))
            pipe.execute()
        except redis.RedisError as exc:
            log.error("channel_pause_not_set", channel=channel, error=type(exc).__name__)
            return 0.0
        return ms / 1000.0

    def admit(self, channel: str) -> tuple[str, float, bool] | None:
        """``None``: send as usual. Else (reason, seconds to wait, probe): ``probe`` True means this delivery
        is the one that tries the settings now (wait 0); False that it waits (paused, or another probes)."""
        keys = self._keys
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.get(keys.paused(channel))
            pipe.pttl(keys.paused(channel))
            pipe.get(keys.pause_probation(channel))
            reason, ttl, probation = pipe.execute()
            if reason is not None and int(ttl) > 0:
                return _text(reason), int(ttl) / 1000.0, False
            if probation is None:
                return None
            probe_ms = max(1, math.ceil(min(PROBE_SECONDS, self.pause_seconds) * 1000))
            if self._client.set(keys.pause_probe(channel), "1", px=probe_ms, nx=True):
                return _text(probation), 0.0, True
            left = int(self._client.pttl(keys.pause_probe(channel)))
        except redis.RedisError as exc:
            log.warning("channel_pause_unreadable", channel=channel, error=type(exc).__name__)
            return None
        return _text(probation), max(left, 1000) / 1000.0, False

    def state(self, channel: str) -> tuple[str, float] | None:
        """(reason, seconds left) while ``channel`` is paused, else ``None`` (reads only)."""
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.get(self._keys.paused(channel))
            pipe.pttl(self._keys.paused(channel))
            reason, ttl = pipe.execute()
        except redis.RedisError as exc:
            log.warning("channel_pause_unreadable", channel=channel, error=type(exc).__name__)
            return None
        if reason is None or int(ttl) <= 0:
            return None
        return _text(reason), int(ttl) / 1000.0

    def probe_done(self, channel: str, *, accepted: bool) -> None:
        """The probing delivery's answer: accepted lifts the probation; otherwise the next may probe."""
        names = [self._keys.pause_probe(channel)]
        if accepted:
            names.append(self._keys.pause_probation(channel))
        try:
            self._client.delete(*names)
        except redis.RedisError as exc:  # the probe key expires by itself
            log.warning("channel_probe_not_cleared", channel=channel, error=type(exc).__name__)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def paused_channels(client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> dict[str, str]:
    """Every paused channel and its reason (for ``status`` and ``/metrics``); one ``MGET``, raises on errors."""
    keys = RedisKeys(prefix)
    names = [channel.value for channel in ChannelType]
    values = client.mget([keys.paused(name) for name in names])
    return {name: _text(value) for name, value in zip(names, values, strict=True) if value is not None}
