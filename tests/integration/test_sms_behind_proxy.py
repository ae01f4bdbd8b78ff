"""Behind an HTTP proxy, a connection dropped after the request was written is an unknown outcome
(docs/contract.md §7.7, last point): urllib3 wraps the ``RemoteDisconnected`` in its ``ProxyError`` and
requests raises ``ProxyError``; the whole cause chain says the request went on. A proxy that cannot be
reached is a plain transient failure: nothing was sent. Real sockets: a loopback forwarding proxy in front of
the loopback Twilio, ``HTTP_PROXY`` as an operator sets it, real Postgres and Redis.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from alert_worker import execute_delivery_job
from tests.support.fake_twilio import FakeTwilio, redirected_to, running_fake_twilio
from tests.support.forward_proxy import ProxyControl, running_forward_proxy
from tests.support.http_providers import channel_env
from tests.support.processes import free_port

PHONE = "+15551234567"


@pytest.fixture
def twilio(monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str]) -> Iterator[FakeTwilio]:
    env = {**worker_env, **channel_env(slack_default="", twilio_token="t" * 32),
           "ALERT_RATE_SMS_PER_RECIPIENT_HOUR": "0", "ALERT_RATE_SMS_PER_MIN": "0"}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with running_fake_twilio() as fake, redirected_to(fake.base_url):
        yield fake


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProxyControl]:
    with running_forward_proxy() as control:
        monkeypatch.setenv("HTTP_PROXY", control.url)
        monkeypatch.setenv("http_proxy", control.url)
        yield control


def test_a_post_the_proxy_forwarded_then_dropped_is_looked_up_not_resent(
    twilio: FakeTwilio, proxy: ProxyControl, database_url: str
) -> None:
    proxy.drop_after_forwarding = 1
    first = execute_delivery_job("p-1", "sms", PHONE, "CRITICAL", "db-1 down")
    assert first["error"] == "outcome_unknown: twilio connection dropped after sending: ProxyError"
    assert len(twilio.accepted) == 1, "the proxy forwarded it: Twilio has the message"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE alert_deliveries SET next_attempt_at = now() WHERE id = 'p-1'")
    retry = execute_delivery_job("p-1", "sms", PHONE, "CRITICAL", "db-1 down", attempt=1)
    assert (retry["outcome"], retry["message_id"]) == ("delivered", twilio.accepted[0]["sid"])
    assert twilio.posts == 1, "not sent twice"
    assert [f.split()[0] for f in proxy.forwarded] == ["POST", "GET"], "the look-up went through the proxy"


def test_a_proxy_that_cannot_be_reached_is_a_plain_transient_failure(
    twilio: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing left this machine: no ``outcome_unknown:``, so no look-up and no held rate-limit slot."""
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HTTP_PROXY", closed)
    monkeypatch.setenv("http_proxy", closed)
    result = execute_delivery_job("p-2", "sms", PHONE, "CRITICAL", "db-1 down")
    assert result["outcome"] == "retry_scheduled"
    assert result["error"] == "twilio connection error: ProxyError"
    assert twilio.accepted == []
