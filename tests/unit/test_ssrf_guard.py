"""The Slack SSRF guard (docs/contract.md §4): anything but an allowlisted https webhook is refused unsent."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import responses

from alert_worker.channels.slack import SlackChannel, check_webhook_url
from alert_worker.errors import InvalidInputError, PermanentDeliveryError
from alert_worker.models import ChannelType, Message
from alert_worker.settings import SlackSettings

ALLOWED = ("hooks.slack.com", "127.0.0.1", "::1", "localhost")
PATH = "/services/T1/B1/secretpath"

REFUSED = [
    ("http://169.254.169.254/latest/meta-data/", "host"),
    ("https://169.254.169.254/latest/meta-data/iam/", "host"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "host"),
    ("http://metadata.google.internal/computeMetadata/v1/", "host"),
    ("http://hooks.slack.com" + PATH, "https"),
    ("ftp://hooks.slack.com" + PATH, "https"),
    ("file:///etc/passwd", "host"),
    ("gopher://127.0.0.1:6379/_FLUSHALL", "https"),
    ("https://evil.example" + PATH, "host"),
    ("https://hooks.slack.com.evil.example" + PATH, "host"),
    ("https://evilhooks.slack.com" + PATH, "host"),
    ("https://sub.hooks.slack.com" + PATH, "host"),
    ("https://hooks.slack.com." + PATH, "host"),
    ("https://user:pass@hooks.slack.com" + PATH, "credentials"),
    ("https://hooks.slack.com@evil.example" + PATH, "credentials"),
    ("https://evil.example@hooks.slack.com" + PATH, "credentials"),
    ("https://:@hooks.slack.com" + PATH, "credentials"),
    ("https://hooks.slack.com\\@evil.example" + PATH, "malformed"),
    ("https://hooks.slack.com:8443" + PATH, "port"),
    ("https://hooks.slack.com:80" + PATH, "port"),
    ("https://hooks.slack.com:99999" + PATH, "malformed"),
    ("https://hooks.slack.com:abc" + PATH, "malformed"),
    ("https://[::1" + PATH, "malformed"),
    ("http://[::ffff:169.254.169.254]/", "host"),
    ("http://[0:0:0:0:0:ffff:a9fe:a9fe]/", "host"),
    ("http://2852039166/", "host"),
    ("http://0xa9fea9fe/", "host"),
    ("http://0251.0376.0251.0376/", "host"),
    ("http://10.0.0.1" + PATH, "host"),
    ("http://0.0.0.0:6379/", "host"),
    ("hooks.slack.com" + PATH, "host"),
    ("//hooks.slack.com" + PATH, "https"),
    ("https://hooks.slack.com /x", "malformed"),
    ("https://hooks.slack.com\t/x", "malformed"),
    ("https://ｈｏｏｋｓ.slack.com" + PATH, "host"),
]
REFUSED_IDS = [
    "aws-metadata-http",
    "aws-metadata-https",
    "aws-metadata-ipv6",
    "gcp-metadata",
    "plain-http-slack",
    "ftp",
    "file",
    "gopher-redis",
    "other-host",
    "suffix-trick",
    "prefix-trick",
    "subdomain",
    "trailing-dot",
    "userinfo",
    "at-sign-host-confusion",
    "userinfo-allowed-host",
    "empty-userinfo",
    "backslash-confusion",
    "non-default-port",
    "port-80-on-https",
    "port-out-of-range",
    "port-not-a-number",
    "broken-ipv6",
    "ipv4-mapped-ipv6-metadata",
    "ipv6-expanded-metadata",
    "decimal-ip",
    "hex-ip",
    "octal-ip",
    "private-ip",
    "zero-address",
    "no-scheme",
    "scheme-relative",
    "space",
    "tab",
    "fullwidth-unicode-host",
]


@pytest.mark.parametrize(("url", "rule"), REFUSED, ids=REFUSED_IDS)
def test_guard_refuses_url(url: str, rule: str) -> None:
    """Refused with a reason naming the broken rule, and never the URL itself."""
    with pytest.raises(InvalidInputError) as caught:
        check_webhook_url(url, ALLOWED)
    reason = caught.value.reason
    assert reason.startswith("invalid_recipient: slack webhook")
    assert rule in reason
    assert "secretpath" not in reason and "169.254" not in reason and "evil" not in reason


ACCEPTED = [
    "https://hooks.slack.com" + PATH,
    "https://HOOKS.SLACK.COM" + PATH,
    "https://hooks.slack.com:443" + PATH,
    "http://127.0.0.1:8080" + PATH,
    "https://127.0.0.1:9443" + PATH,
    "http://[::1]:8080" + PATH,
    "http://localhost:8080" + PATH,
]
ACCEPTED_IDS = [
    "slack",
    "uppercase-host",
    "explicit-443",
    "http-loopback-v4",
    "https-loopback-port",
    "http-loopback-v6",
    "http-localhost",
]


@pytest.mark.parametrize("url", ACCEPTED, ids=ACCEPTED_IDS)
def test_guard_accepts_allowlisted_https_and_loopback_http(url: str) -> None:
    """Allowed: an allowlisted host over https, plain http (any port) only for an allowlisted loopback host."""
    assert check_webhook_url(url, ALLOWED) == url


def test_loopback_is_refused_unless_allowlisted() -> None:
    """Loopback is not special by itself: only ``SLACK_WEBHOOK_HOSTS`` decides the host."""
    with pytest.raises(InvalidInputError, match="SLACK_WEBHOOK_HOSTS"):
        check_webhook_url("http://127.0.0.1:6379/", ("hooks.slack.com",))


def test_http_is_refused_for_a_non_loopback_allowlisted_host() -> None:
    """An allowlisted public host still needs https."""
    with pytest.raises(InvalidInputError, match="https"):
        check_webhook_url("http://alerts.example.org/hook", ("alerts.example.org",))


@pytest.fixture
def strict_http() -> Iterator[responses.RequestsMock]:
    """Any request at all is recorded; the tests assert none (or exactly the allowed one) was made."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(responses.POST, re.compile(r".*"), body="ok")
        rsps.add(responses.GET, re.compile(r".*"), body="ok")
        yield rsps


def _message(recipient: str) -> Message:
    return Message(delivery_id="d-1", channel=ChannelType.SLACK, recipient=recipient, subject="s", body="b")


@pytest.mark.parametrize(("url", "rule"), REFUSED, ids=REFUSED_IDS)
def test_channel_makes_zero_requests_for_a_refused_url(
    strict_http: responses.RequestsMock, url: str, rule: str
) -> None:
    """Neither ``prepare`` nor a direct ``send`` lets a refused URL reach the network."""
    slack = SlackChannel(settings=SlackSettings("", ("hooks.slack.com",)), timeout_seconds=2)
    with pytest.raises(InvalidInputError):
        slack.prepare(_message(url))
    with pytest.raises(InvalidInputError):
        slack.send(_message(url))
    slack.close()
    assert len(strict_http.calls) == 0


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308], ids=lambda s: f"redirect-{s}")
def test_redirect_to_a_foreign_host_is_never_followed(strict_http: responses.RequestsMock, status: int) -> None:
    """The allowed webhook redirects to the metadata service: one request, then a permanent error.

    Following the redirect would hit an unregistered URL, which ``responses`` answers with a connection
    error (a transient error here), so the exact permanent reason proves it was not followed."""
    hook = "https://hooks.slack.com" + PATH
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        rsps.post(hook, status=status, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        slack = SlackChannel(settings=SlackSettings("", ("hooks.slack.com",)), timeout_seconds=2)
        with pytest.raises(PermanentDeliveryError, match=rf"^slack {status} redirect refused$"):
            slack.send(slack.prepare(_message(hook)))
        slack.close()
        assert [c.request.url for c in rsps.calls] == [hook]
    assert len(strict_http.calls) == 0
