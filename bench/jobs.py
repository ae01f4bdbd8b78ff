"""Floors to compare against: RQ alone, and RQ plus the SMTP send every delivery makes."""

from __future__ import annotations

from alert_worker.channels import build_channel
from alert_worker.channels.kept import kept_channels
from alert_worker.models import ChannelType, Message
from alert_worker.settings import Settings


def noop(delivery_id: str, channel: str, recipient: str, subject: str, body: str, attempt: int = 0) -> None:
    """RQ's own per-job cost: dequeue, (fork), perform, store the result."""


def send_only(delivery_id: str, channel: str, recipient: str, subject: str, body: str, attempt: int = 0) -> str:
    """RQ plus the provider call and nothing else: no database, no Redis of our own, no state.

    In the thread-pooled worker it sends on the thread's kept channel, as a delivery there does.
    """
    kept = kept_channels.get()
    sender = kept.get(ChannelType.EMAIL) if kept is not None else build_channel(ChannelType.EMAIL, Settings.from_env())
    message = Message(
        delivery_id=delivery_id, channel=ChannelType.EMAIL, recipient=recipient, subject=subject, body=body
    )
    try:
        return str(sender.send(sender.prepare(message)).message_id)
    finally:
        if kept is None:
            sender.close()
