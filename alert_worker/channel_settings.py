"""Each channel's settings: what it needs from the environment and which variables it lacks.

``missing`` is the one answer to "is this channel configured?", shared by start-up, ``alert-worker
check`` and the job (a disabled channel poisons its deliveries ``channel_not_configured``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.headerregistry import Address

DEFAULT_TWILIO_API_BASE_URL = "https://api.twilio.com"


def is_bare_address(text: str) -> bool:
    """``user@domain`` and nothing else: the one test of whether e-mail has a sender (check, start-up, job)."""
    try:
        address = Address(addr_spec=text)
    except (HeaderParseError, ValueError, IndexError, TypeError):
        return False
    return bool(address.username and address.domain and address.addr_spec == text)


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    from_address: str
    security: str  # starttls | ssl | none
    ca_file: str = ""  # SMTP_CA_FILE: PEM bundle trusted besides the default store, for this connection only

    @property
    def missing(self) -> tuple[str, ...]:
        gaps = []
        if not self.host:
            gaps.append("SMTP_HOST")
        if not is_bare_address(self.from_address):  # SMTP_USER=apikey is no sender address
            gaps.append("ALERTS_FROM_EMAIL")
        return tuple(gaps)

    @property
    def login(self) -> bool:
        return bool(self.user and self.password)


@dataclass(frozen=True)
class SlackSettings:
    default_webhook_url: str = field(repr=False)
    allowed_hosts: tuple[str, ...]

    @property
    def missing(self) -> tuple[str, ...]:
        return ()  # a recipient may name its own webhook; only the default needs the variable


@dataclass(frozen=True)
class TwilioSettings:
    account_sid: str
    auth_token: str = field(repr=False)
    from_number: str
    api_base_url: str = DEFAULT_TWILIO_API_BASE_URL  # TWILIO_API_BASE_URL: staging or a provider mock

    @property
    def missing(self) -> tuple[str, ...]:
        names = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM_NUMBER")
        values = (self.account_sid, self.auth_token, self.from_number)
        return tuple(n for n, v in zip(names, values, strict=False) if not v)


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address: the only hosts a webhook may be posted to over plain http."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
