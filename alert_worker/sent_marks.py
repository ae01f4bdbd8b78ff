"""Sent markers: a provider's acceptance kept in Redis until Postgres has recorded it.

When ``channel.send`` succeeded but writing ``delivered`` fails or hangs (Postgres down, a lost reply, a
silent network, a lost claim), the row stays ``in_progress`` or goes back to ``pending`` and is claimed
again later. Without a record of the acceptance that later claim would send the alert a second time. So
the executor writes ``<prefix>sent:<delivery id>`` (the provider's message id and the time) right after
the acceptance and before the ``delivered`` write, and deletes it once that write succeeded; every claim
reads it before any rate-limit slot or request: found means delivered with that message id, and nothing
is sent.

A message that carried held deliveries (docs/contract.md §8) marks each carried id too, right after the
provider accepted it, with ``via`` = the carrier: a carried row that goes back to a claim (its worker died
before the ``delivered`` write, or its claim was lost) ends ``delivered`` via that carrier, unsent.

Every method is best effort and never raises: a marker that cannot be written or read leaves the
delivery as it was before markers existed (it may be sent again), which is logged. The remaining bound
is a crash between the provider's acceptance and the marker write (``kill -9``), or Redis being down at
that moment too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from alert_worker.keys import DEFAULT_PREFIX, RedisKeys
from alert_worker.settings import Settings

# Like RQ's failure_ttl: far longer than any path back to a claim (stuck reclaim, retries, deferrals,
# an operator's replay after a week-end).
SENT_MARK_TTL_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class SentMark:
    """What the provider said when it accepted the message: its id (may be ``None``) and when (epoch s)."""

    message_id: str | None
    sent_at: float | None
    via: str | None = None  # the carrier whose message carried this delivery (§8)


class SentMarks:
    """Record, find and clear sent markers on one Redis client; shared by every worker on the prefix."""

    def __init__(
        self,
        *,
        client: redis.Redis,
        key_prefix: str = DEFAULT_PREFIX,
        ttl_seconds: int = SENT_MARK_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._keys = RedisKeys(key_prefix)
        self._ttl = ttl_seconds
        self._clock = clock

    def record(self, delivery_id: str, message_id: str | None, *, log: Any) -> bool:
        """One ``SET … EX``; whether it was kept. Logs ``sent_marker_failed`` instead of raising."""
        value = json.dumps({"message_id": message_id, "sent_at": self._clock()})
        try:
            self._client.set(self._keys.sent(delivery_id), value, ex=self._ttl)
        except Exception as exc:  # noqa: BLE001 - the delivery goes on without it, as before markers
            log.error("sent_marker_failed", error=type(exc).__name__)
            return False
        return True

    def record_carried(self, delivery_ids: list[str], *, via: str, message_id: str | None, log: Any) -> None:
        """One pipelined ``SET … EX`` per carried id, ``via`` the carrier; logs instead of raising."""
        if not delivery_ids:
            return
        value = json.dumps({"message_id": message_id, "sent_at": self._clock(), "via": via})
        try:
            pipe = self._client.pipeline(transaction=False)
            for delivery_id in delivery_ids:
                pipe.set(self._keys.sent(delivery_id), value, ex=self._ttl)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - best effort: without it a carried row may be re-sent
            log.error("sent_marker_failed", error=type(exc).__name__, carried=len(delivery_ids))

    def clear_carried(self, delivery_ids: list[str], *, log: Any) -> None:
        """Delete the carried ids' markers once their rows say delivered."""
        if not delivery_ids:
            return
        try:
            self._client.delete(*(self._keys.sent(d) for d in delivery_ids))
        except Exception as exc:  # noqa: BLE001 - the rows are already delivered
            log.warning("sent_marker_not_cleared", error=type(exc).__name__, carried=len(delivery_ids))

    def find(self, delivery_id: str, *, log: Any) -> SentMark | None:
        """The marker, or ``None`` when there is none or Redis cannot be asked (then the delivery is sent)."""
        try:
            raw = self._client.get(self._keys.sent(delivery_id))
        except Exception as exc:  # noqa: BLE001 - unknown is treated as "not sent", as before markers
            log.warning("sent_marker_unreadable", error=type(exc).__name__)
            return None
        if raw is None:
            return None
        return _parse(raw)

    def marked(self, delivery_ids: list[str], *, log: Any) -> set[str]:
        """Which of ``delivery_ids`` have a marker: one pipelined read. Redis unreadable: none (as ``find``)."""
        if not delivery_ids:
            return set()
        try:
            pipe = self._client.pipeline(transaction=False)
            for delivery_id in delivery_ids:
                pipe.exists(self._keys.sent(delivery_id))
            found = pipe.execute()
        except Exception as exc:  # noqa: BLE001 - unknown is treated as "not sent", as before markers
            log.warning("sent_marker_unreadable", error=type(exc).__name__, carried=len(delivery_ids))
            return set()
        return {d for d, n in zip(delivery_ids, found, strict=True) if n}

    def clear(self, delivery_id: str, *, log: Any) -> None:
        """Delete the marker once the row says delivered; a leftover one expires and is never read again."""
        try:
            self._client.delete(self._keys.sent(delivery_id))
        except Exception as exc:  # noqa: BLE001 - the row is already delivered
            log.warning("sent_marker_not_cleared", error=type(exc).__name__)


def _parse(raw: Any) -> SentMark:
    """A marker that exists means the provider accepted, even if its value cannot be read."""
    try:
        data = json.loads(raw)
        message_id, sent_at, via = data.get("message_id"), data.get("sent_at"), data.get("via")
    except (ValueError, TypeError, AttributeError):
        return SentMark(message_id=None, sent_at=None)
    return SentMark(
        message_id=message_id if isinstance(message_id, str) else None,
        sent_at=float(sent_at) if isinstance(sent_at, int | float) else None,
        via=via if isinstance(via, str) else None,
    )


class NoSentMarks:
    """For executors built without Redis (unit tests of other behaviour): nothing is kept, nothing found."""

    def record(self, delivery_id: str, message_id: str | None, *, log: Any) -> bool:
        return False

    def find(self, delivery_id: str, *, log: Any) -> SentMark | None:
        return None

    def marked(self, delivery_ids: list[str], *, log: Any) -> set[str]:
        return set()

    def clear(self, delivery_id: str, *, log: Any) -> None:
        pass

    def record_carried(self, delivery_ids: list[str], *, via: str, message_id: str | None, log: Any) -> None:
        pass

    def clear_carried(self, delivery_ids: list[str], *, log: Any) -> None:
        pass


def sent_mark_ttl(settings: Settings) -> int:
    """At least a week, and always well past the longest way back to a claim the settings allow."""
    longest = settings.stuck_after_seconds + settings.max_defer_seconds + settings.max_retry_delay_seconds
    return int(max(SENT_MARK_TTL_SECONDS, 2 * longest))


def build_sent_marks(settings: Settings, client: redis.Redis) -> SentMarks:
    """The production wiring: markers on the job's Redis client, under ``ALERT_REDIS_KEY_PREFIX``."""
    return SentMarks(client=client, key_prefix=settings.redis_key_prefix, ttl_seconds=sent_mark_ttl(settings))
