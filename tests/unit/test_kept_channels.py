"""Channel objects kept per thread (the thread-pooled worker): one per (thread, channel), closed at the end."""

from __future__ import annotations

import threading

from alert_worker.channels.base import Channel
from alert_worker.channels.kept import ThreadChannels
from alert_worker.models import ChannelType
from tests.support.fakes import FakeChannel
from tests.unit.test_executor import Harness


def _cache() -> tuple[ThreadChannels, list[Channel]]:
    built: list[Channel] = []

    def build(_: ChannelType) -> Channel:
        built.append(FakeChannel())
        return built[-1]

    return ThreadChannels(build=build), built


def _in_thread(cache: ThreadChannels, channel: ChannelType) -> Channel:
    found: list[Channel] = []
    thread = threading.Thread(target=lambda: found.append(cache.get(channel)))
    thread.start()
    thread.join()
    return found[0]


def test_one_thread_gets_the_same_channel_object_for_every_delivery_on_a_channel() -> None:
    """Built once on first use: the second delivery reuses the object (and its sessions)."""
    cache, built = _cache()
    first = cache.get(ChannelType.SLACK)
    assert cache.get(ChannelType.SLACK) is first
    assert cache.get(ChannelType.SMS) is not first
    assert len(built) == 2


def test_each_thread_gets_its_own_channel_object() -> None:
    """Channels are not thread-safe: another thread never shares this thread's object."""
    cache, built = _cache()
    mine = cache.get(ChannelType.SLACK)
    theirs = _in_thread(cache, ChannelType.SLACK)
    assert theirs is not mine
    assert len(built) == 2 and len(cache) == 2


def test_close_thread_closes_only_the_calling_threads_channels_and_close_all_the_rest() -> None:
    """A job thread closes its own at its end; the worker closes what is left when it stops."""
    cache, _ = _cache()
    mine = cache.get(ChannelType.EMAIL)
    theirs = _in_thread(cache, ChannelType.EMAIL)
    assert cache.close_thread() == []
    assert isinstance(mine, FakeChannel) and isinstance(theirs, FakeChannel)
    assert (mine.closed, theirs.closed) == (1, 0)
    assert cache.close_all() == []
    assert (mine.closed, theirs.closed) == (1, 1)
    assert len(cache) == 0


def test_a_close_failure_is_returned_and_the_other_channels_are_still_closed() -> None:
    """One channel raising on close does not leave the others open."""
    cache, _ = _cache()
    failing = cache.get(ChannelType.EMAIL)
    other = cache.get(ChannelType.SLACK)

    def boom() -> None:
        raise OSError("reset")

    failing.close = boom  # type: ignore[method-assign]
    errors = cache.close_all()
    assert [type(e) for e in errors] == [OSError]
    assert isinstance(other, FakeChannel) and other.closed == 1


def test_the_executor_leaves_a_kept_channel_open_after_the_send() -> None:
    """close_channels=False: the factory's channel outlives the job (the per-job default closes it)."""
    h = Harness()
    h.executor.close_channels = False
    assert h.run()["outcome"] == "delivered"
    assert len(h.channel.sent) == 1 and h.channel.closed == 0
