"""Twilio through ``TWILIO_API_BASE_URL`` (a loopback fake), ``check`` asking for the account, the look-up's
errors, and the identifier shapes checked at start-up (contract §7.7, issue 20 points 0 and 7)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from alert_worker.channels.sms import SmsChannel
from alert_worker.errors import ChannelMisconfiguredError, TransientDeliveryError
from alert_worker.models import ChannelType, Message
from alert_worker.settings import TwilioSettings
from tests.support.cli import run_cli
from tests.support.http_server import serving

SID = "AC" + "ab" * 16
TOKEN = "tok-canary-" + "1" * 21
FROM = "+15005550006"
TO = "+15551234567"


@dataclass
class FakeTwilio:
    """Answers every request with the scripted (status, JSON body) for its method; records method and path."""

    answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with fake.lock:
                    fake.seen.append((self.command, self.path))
                status, body = fake.answers.get(self.command, (200, {}))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def fake() -> FakeTwilio:
    return FakeTwilio()


@pytest.fixture
def base_url(fake: FakeTwilio) -> Iterator[str]:
    with serving(fake.handler(), name="fake-twilio") as url:
        yield url


@pytest.fixture
def channel(base_url: str) -> Iterator[SmsChannel]:
    sms = SmsChannel(settings=TwilioSettings(SID, TOKEN, FROM, api_base_url=base_url), timeout_seconds=5)
    yield sms
    sms.close()


def _message() -> Message:
    return Message(delivery_id="d-1", channel=ChannelType.SMS, recipient=TO, subject="Disk full", body="db-1")


def _error(status: int, code: int) -> tuple[int, dict[str, Any]]:
    return status, {"code": code, "message": "refused", "more_info": "https://www.twilio.com/docs", "status": status}


def _window() -> dict[str, datetime]:
    """A look-up window around now (``SmsChannel.find_sent``)."""
    now = datetime.now(UTC)
    return {"earliest": now - timedelta(seconds=60), "latest": now + timedelta(seconds=60)}


# -- TWILIO_API_BASE_URL ------------------------------------------------------------------------------
def test_sends_and_look_ups_go_to_the_configured_base_url(fake: FakeTwilio, channel: SmsChannel) -> None:
    """The create and the unknown-outcome list call both reach the loopback fake, not api.twilio.com."""
    created = {"sid": "SM" + "1" * 32, "to": TO, "from": FROM, "body": "Disk full: db-1", "status": "queued"}
    fake.answers["POST"] = (201, {**created, "date_created": format_datetime(datetime.now(UTC), usegmt=True)})
    fake.answers["GET"] = (200, {"messages": [], "next_page_uri": None, "page": 0, "page_size": 50, "uri": "/x"})
    assert channel.send(_message()).message_id == "SM" + "1" * 32
    assert channel.find_sent(_message(), **_window()) == []
    assert [method for method, _ in fake.seen] == ["POST", "GET"]
    assert fake.seen[0][1] == f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert fake.seen[1][1].startswith(f"/2010-04-01/Accounts/{SID}/Messages.json?")


# -- the look-up failing (issue 20 point 7) ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "named"),
    [((500, {"code": 500, "message": "boom", "status": 500}), "HTTP 500"), ((404, {}), "HTTP 404")],
    ids=["http-500", "http-404-no-code"],
)
def test_a_failed_look_up_names_the_http_status(
    fake: FakeTwilio, channel: SmsChannel, answer: tuple[int, dict[str, Any]], named: str
) -> None:
    fake.answers["GET"] = answer
    with pytest.raises(TransientDeliveryError) as caught:
        channel.find_sent(_message(), **_window())
    assert caught.value.reason.startswith("outcome_unknown: twilio lookup failed: ") and named in caught.value.reason
    assert "TwilioException" not in caught.value.reason and not isinstance(caught.value, ChannelMisconfiguredError)


def test_a_look_up_refused_with_401_is_the_account_s_settings(fake: FakeTwilio, channel: SmsChannel) -> None:
    fake.answers["GET"] = _error(401, 20003)
    with pytest.raises(ChannelMisconfiguredError) as caught:
        channel.find_sent(_message(), **_window())
    assert "HTTP 401" in caught.value.reason and TOKEN not in caught.value.reason


# -- a refused send pauses ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer", [_error(401, 20003), _error(404, 20404), _error(400, 21212)], ids=["20003", "20404", "21212-from"]
)
def test_a_send_refused_for_the_account_or_sender_is_a_misconfiguration(
    fake: FakeTwilio, channel: SmsChannel, answer: tuple[int, dict[str, Any]]
) -> None:
    fake.answers["POST"] = answer
    with pytest.raises(ChannelMisconfiguredError) as caught:
        channel.send(_message())
    assert caught.value.definite


# -- check ------------------------------------------------------------------------------------------------
def test_check_account_asks_for_the_account_with_one_get(fake: FakeTwilio, channel: SmsChannel) -> None:
    fake.answers["GET"] = (200, {"sid": SID, "status": "active"})
    channel.check_account()
    assert fake.seen == [("GET", f"/2010-04-01/Accounts/{SID}.json")]


def _sms_env(worker_env: dict[str, str], base_url: str, **extra: str) -> dict[str, str]:
    return {
        **worker_env,
        "TWILIO_ACCOUNT_SID": SID,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "TWILIO_FROM_NUMBER": FROM,
        "TWILIO_API_BASE_URL": base_url,
        **extra,
    }


def test_check_exits_1_when_twilio_refuses_the_credentials(
    worker_env: dict[str, str], fake: FakeTwilio, base_url: str
) -> None:
    fake.answers["GET"] = _error(401, 20003)
    done = run_cli(["check", "--json"], _sms_env(worker_env, base_url))
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["logins"]["sms"].startswith("refused: twilio 20003") and report["ok"] is False
    assert report["logins"]["email"] == "ok"
    assert TOKEN not in done.stdout + done.stderr
    assert fake.seen == [("GET", f"/2010-04-01/Accounts/{SID}.json")]


def test_check_passes_when_both_providers_accept_the_settings(
    worker_env: dict[str, str], fake: FakeTwilio, base_url: str
) -> None:
    fake.answers["GET"] = (200, {"sid": SID, "status": "active"})
    done = run_cli(["check"], _sms_env(worker_env, base_url))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sms login: ok" in done.stdout and "email login: ok" in done.stdout


def test_check_exits_1_when_the_smtp_server_refuses_the_password(worker_env: dict[str, str]) -> None:
    from tests.support.smtp import running_smtp_sink

    with running_smtp_sink(login=("alerts", "right")) as sink:
        env = {**worker_env, "SMTP_PORT": str(sink.port), "SMTP_USER": "alerts", "SMTP_PASSWORD": "wrong"}
        done = run_cli(["check"], env)
        assert sink.accepted == []
    assert done.returncode == 1
    assert "email login: refused: smtp_auth_failed 535" in done.stdout and "wrong" not in done.stdout


# -- shapes checked at start-up --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"TWILIO_ACCOUNT_SID": "ACbad"}, "TWILIO_ACCOUNT_SID"),
        ({"TWILIO_FROM_NUMBER": "MGshort"}, "TWILIO_FROM_NUMBER"),
        ({"TWILIO_API_BASE_URL": "ftp://mock"}, "TWILIO_API_BASE_URL"),
        ({"SMTP_CA_FILE": "/nonexistent/ca.pem"}, "SMTP_CA_FILE"),
    ],
    ids=["account-sid", "service-sid", "base-url", "ca-file"],
)
def test_a_malformed_channel_setting_refuses_start_up_with_one_json_line(
    worker_env: dict[str, str], base_url: str, override: dict[str, str], named: str
) -> None:
    done = run_cli(["run", "--burst"], _sms_env(worker_env, base_url, **override))
    assert done.returncode == 1
    [line] = [json.loads(text) for text in (done.stdout + done.stderr).splitlines() if text.strip()]
    assert line["event"] == "configuration_invalid" and named in line["error"]
