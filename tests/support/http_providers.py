"""``responses``-backed Slack and Twilio for job-level tests, with a trap for any other host.

``mocked_providers()`` answers Slack webhooks on the allowlisted host and Twilio's Messages endpoint with
scripted replies (default: success), and records every request to anything else in ``foreign`` (answered
with a connection error). Tests assert ``foreign == []``: no request left for a host outside the allowlist.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
import responses

SLACK_HOST = "hooks.slack.com"
TWILIO_SID = "AC" + "1" * 32
TWILIO_FROM = "+15005550006"
TWILIO_URL = f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"

# A scripted reply: (status, body, headers) or an exception instance to raise.
Reply = tuple[int, str, dict[str, str]] | Exception


def channel_env(*, slack_default: str, twilio_token: str) -> dict[str, str]:
    """Settings for Slack and SMS that point at the mocked providers."""
    return {
        "SLACK_WEBHOOK_URL": slack_default,
        "SLACK_WEBHOOK_HOSTS": SLACK_HOST,
        "TWILIO_ACCOUNT_SID": TWILIO_SID,
        "TWILIO_AUTH_TOKEN": twilio_token,
        "TWILIO_FROM_NUMBER": TWILIO_FROM,
    }


@dataclass
class MockedProviders:
    slack_replies: deque[Reply] = field(default_factory=deque)
    twilio_replies: deque[Reply] = field(default_factory=deque)
    slack_requests: list[requests.PreparedRequest] = field(default_factory=list)
    twilio_requests: list[requests.PreparedRequest] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # hosts only: never print a secret path

    def _answer(self, replies: deque[Reply], default: Reply) -> tuple[int, dict[str, str], str]:
        reply = replies.popleft() if replies else default
        if isinstance(reply, Exception):
            raise reply
        status, body, headers = reply
        return status, headers, body

    def slack(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        self.slack_requests.append(request)
        return self._answer(self.slack_replies, (200, "ok", {}))

    def twilio(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        self.twilio_requests.append(request)
        sid = f"SM{len(self.twilio_requests):032d}"
        return self._answer(self.twilio_replies, (201, f'{{"sid": "{sid}", "status": "queued"}}', {}))

    def trap(self, request: requests.PreparedRequest) -> Any:
        self.foreign.append(urlsplit(request.url or "").hostname or "?")
        raise requests.ConnectionError("blocked by the test: host outside the allowlist")


@contextmanager
def mocked_providers() -> Iterator[MockedProviders]:
    providers = MockedProviders()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_callback(responses.POST, re.compile(rf"https://{re.escape(SLACK_HOST)}/.*"), callback=providers.slack)
        rsps.add_callback(responses.POST, TWILIO_URL, callback=providers.twilio)
        # The trap must not also match the provider routes: when several routes match, ``responses`` uses
        # the first and then drops it, so the next Slack or Twilio request would fall into the trap.
        others = re.compile(rf"^(?!https://{re.escape(SLACK_HOST)}/|{re.escape(TWILIO_URL)}$).*")
        for method in (responses.GET, responses.POST, responses.PUT, responses.DELETE, responses.HEAD):
            rsps.add_callback(method, others, callback=providers.trap)
        yield providers
