"""Delivery channels. ``build_channel`` makes the one a job needs, imported lazily.

Only this package imports ``smtplib``, ``requests`` or ``twilio``; the SMS module (and with it
``twilio``, ~150 ms to import) is loaded only when an SMS is actually sent.
"""

from __future__ import annotations

from alert_worker.channels.base import Channel, DisabledChannel
from alert_worker.models import ChannelType
from alert_worker.settings import Settings
from alert_worker.validation import SLACK_DEFAULT_RECIPIENTS, clean_recipient


def build_channel(channel: ChannelType, settings: Settings, *, kept: bool = False) -> Channel:
    """The channel for one job, or a ``DisabledChannel`` naming the missing variables.

    ``kept``: the object serves many deliveries of one thread (``channels.kept``); the e-mail channel then
    keeps its SMTP connection open between them.
    """
    missing = settings.missing_channel_settings().get(channel)
    if missing:
        return DisabledChannel(channel, missing)
    if channel is ChannelType.EMAIL:
        from alert_worker.channels.email import EmailChannel

        return EmailChannel(settings=settings.smtp, timeout_seconds=settings.send_timeout_seconds, keep_open=kept)
    if channel is ChannelType.SLACK:
        from alert_worker.channels.slack import SlackChannel

        return SlackChannel(settings=settings.slack, timeout_seconds=settings.send_timeout_seconds)
    from alert_worker.channels.sms import SmsChannel

    return SmsChannel(settings=settings.twilio, timeout_seconds=settings.send_timeout_seconds)


def check_recipient(channel: ChannelType, recipient: str, settings: Settings) -> None:
    """The recipient checks a delivery's ``prepare`` makes, without a connection or channel settings:
    ``InvalidInputError`` naming the rule, so ``send`` refuses what the job would poison. ``default`` (or
    empty) for Slack is the workers' ``SLACK_WEBHOOK_URL`` and is not checked here."""
    text = clean_recipient(recipient)
    if channel is ChannelType.EMAIL:
        from alert_worker.channels.email import parse_address

        parse_address(text)
    elif channel is ChannelType.SLACK:
        if text not in SLACK_DEFAULT_RECIPIENTS:
            from alert_worker.channels.slack import check_webhook_url

            check_webhook_url(text, settings.slack.allowed_hosts)
    else:
        from alert_worker.channels.sms import check_e164  # imports no twilio (that waits for a send)

        check_e164(text)


__all__ = ["Channel", "DisabledChannel", "build_channel", "check_recipient"]
