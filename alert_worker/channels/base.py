"""The channel interface: one class per provider, a declarative head and one ``send()``.

A channel's ``prepare`` checks and normalizes a message before any rate-limit slot is taken (raising
``InvalidInputError``); ``send`` returns a ``SendReceipt`` or raises ``TransientDeliveryError`` /
``PermanentDeliveryError``. Provider exceptions never leave a channel module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar

from alert_worker.errors import ChannelNotConfiguredError
from alert_worker.models import ChannelType, Message, SendReceipt


class Channel(ABC):
    name: ClassVar[ChannelType]
    max_text_chars: ClassVar[int]  # longer text is truncated with a visible marker
    enabled: bool = True

    @abstractmethod
    def prepare(self, message: Message) -> Message:
        """Validate the recipient and fit the text to the provider's limits."""

    @abstractmethod
    def send(self, message: Message) -> SendReceipt:
        """Hand the message to the provider once."""

    def carried_fit(self, message: Message, carried: Sequence[Message]) -> int:
        """How many of ``carried`` (oldest first) ``message`` can carry and show in full (docs/contract.md §8);
        the executor hands the rest back to held. By default all: the channel's digest lists every one."""
        return len(carried)

    def destination(self, message: Message) -> str:
        """What the provider rate-limits on (webhook, account + sender, server): the cooldown's key."""
        return self.name.value

    def sent_text(self, message: Message) -> str:
        """The text the provider keeps for a prepared message (what ``find_sent`` compares)."""
        return f"{message.subject}\n{message.body}"

    def find_sent(
        self, message: Message, *, earliest: datetime, latest: datetime, sent_sha256: str | None = None
    ) -> list[str]:
        """Provider ids of messages like this one (sender, recipient, text) created in the window;
        ``sent_sha256``: the text's SHA-256 instead of the message's own text (a digest it sent, §8)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook; most channels hold nothing
        """Release per-job resources (sessions, sockets)."""

    def __repr__(self) -> str:  # never show settings: they hold secrets
        return f"<{type(self).__name__} enabled={self.enabled}>"


class DisabledChannel(Channel):
    """Stands in for a channel whose settings are missing: every delivery on it is poisoned."""

    max_text_chars = 0
    enabled = False

    def __init__(self, channel: ChannelType, missing: tuple[str, ...]) -> None:
        self.channel = channel
        self.missing = missing

    def prepare(self, message: Message) -> Message:
        raise ChannelNotConfiguredError(self.channel.value)

    def send(self, message: Message) -> SendReceipt:
        raise ChannelNotConfiguredError(self.channel.value)
