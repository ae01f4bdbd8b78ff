"""Channel objects kept for a thread's life: one per (thread, channel type) in the thread-pooled worker.

A channel holds its provider sessions (the Slack ``requests.Session``, the Twilio client and its HTTP
session, the SMTP connection when ``keep_open``). Built per job, each delivery pays a new TCP (and TLS)
connection; kept per thread, HTTP keep-alive and the Twilio client are reused across that thread's
deliveries. Each channel object is used by one thread only (none of them is thread-safe), and is closed
when its thread ends or when the worker stops. The job threads find the cache through ``kept_channels``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from contextvars import ContextVar

from alert_worker.channels.base import Channel
from alert_worker.models import ChannelType


class ThreadChannels:
    """One channel per (thread, channel type), built on the thread's first delivery on that channel."""

    def __init__(self, *, build: Callable[[ChannelType], Channel]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._by_thread: dict[int, dict[ChannelType, Channel]] = {}

    def get(self, channel: ChannelType) -> Channel:
        """This thread's channel object for ``channel`` (built on first use)."""
        ident = threading.get_ident()
        with self._lock:
            mine = self._by_thread.setdefault(ident, {})
            found = mine.get(channel)
        if found is None:
            found = self._build(channel)  # outside the lock: building may import (twilio ~150 ms)
            with self._lock:
                mine[channel] = found
        return found

    def close_thread(self) -> list[BaseException]:
        """Close the calling thread's channels (at the end of a job thread)."""
        with self._lock:
            mine = self._by_thread.pop(threading.get_ident(), {})
        return _close(mine.values())

    def close_all(self) -> list[BaseException]:
        """Close every channel still held (worker stop, after the job threads were joined)."""
        with self._lock:
            held = [channel for mine in self._by_thread.values() for channel in mine.values()]
            self._by_thread.clear()
        return _close(held)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(mine) for mine in self._by_thread.values())


def _close(channels: Iterable[Channel]) -> list[BaseException]:
    errors: list[BaseException] = []
    for channel in channels:
        try:
            channel.close()
        except Exception as exc:  # noqa: BLE001 - collected; a close failure never stops the others
            errors.append(exc)
    return errors


# Set in each job thread of the thread-pooled worker; ``None`` elsewhere (a job builds its own channels).
kept_channels: ContextVar[ThreadChannels | None] = ContextVar("kept_channels", default=None)
