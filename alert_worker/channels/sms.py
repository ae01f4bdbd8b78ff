"""SMS through Twilio (placeholder until the channels issue lands)."""

from __future__ import annotations

from alert_worker.channels.base import Channel
from alert_worker.errors import PermanentDeliveryError
from alert_worker.models import ChannelType, Message, SendReceipt
from alert_worker.settings import TwilioSettings


class SmsChannel(Channel):
    name = ChannelType.SMS
    max_text_chars = 1_600

    def __init__(self, *, settings: TwilioSettings, timeout_seconds: float) -> None:
        self._settings = settings
        self._timeout = timeout_seconds

    def prepare(self, message: Message) -> Message:
        return message

    def send(self, message: Message) -> SendReceipt:
        raise PermanentDeliveryError("channel_not_configured: sms")
