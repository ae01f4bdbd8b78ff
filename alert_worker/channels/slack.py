"""Slack incoming webhooks over ``requests`` (placeholder until the channels issue lands)."""

from __future__ import annotations

from alert_worker.channels.base import Channel
from alert_worker.errors import PermanentDeliveryError
from alert_worker.models import ChannelType, Message, SendReceipt
from alert_worker.settings import SlackSettings


class SlackChannel(Channel):
    name = ChannelType.SLACK
    max_text_chars = 40_000

    def __init__(self, *, settings: SlackSettings, timeout_seconds: float) -> None:
        self._settings = settings
        self._timeout = timeout_seconds

    def prepare(self, message: Message) -> Message:
        return message

    def send(self, message: Message) -> SendReceipt:
        raise PermanentDeliveryError("channel_not_configured: slack")
