"""The SMS unknown-outcome look-up against Twilio's Messages list, under ``responses`` (docs/contract.md §6.2)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import requests
import responses
from responses import matchers
from urllib3.exceptions import ProtocolError

from alert_worker.channels.sms import SmsChannel
from alert_worker.errors import OutcomeUnknownError, TransientDeliveryError
from alert_worker.models import ChannelType, Message
from alert_worker.settings import TwilioSettings
from tests.unit.test_feedback_executor import Harness

SID = "AC" + "0" * 32
TOKEN = "tok" + "1" * 29
FROM = "+15005550006"
TO = "+15551234567"
URL = f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"
TEXT = "Disk full: db-1 at 99%"
SINCE = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)  # the fake store's clock: when the unknown attempt began


def _message() -> Message:
    return Message(delivery_id="d-1", channel=ChannelType.SMS, recipient=TO, subject="Disk full", body="db-1 at 99%")


def _listed(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"messages": list(messages), "next_page_uri": None, "page": 0, "page_size": 50, "uri": "/x"}


def _sent(sid: str, body: str = TEXT, created: datetime = SINCE + timedelta(seconds=1), status: str = "sent") -> Any:
    return {
        "sid": sid,
        "to": TO,
        "from": FROM,
        "body": body,
        "status": status,
        "date_created": format_datetime(created, usegmt=True),
    }


@pytest.fixture
def channel() -> Iterator[SmsChannel]:
    sms = SmsChannel(settings=TwilioSettings(SID, TOKEN, FROM), timeout_seconds=3)
    yield sms
    sms.close()


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def _list_query() -> Any:
    return matchers.query_param_matcher({"To": TO, "From": FROM, "PageSize": "50"})


LATEST = SINCE + timedelta(seconds=70)


@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        ([_sent("SM1")], ["SM1"]),
        ([_sent("SM1", body="another alert")], []),
        ([_sent("SM1", created=SINCE - timedelta(minutes=5))], []),
        ([_sent("SM1", created=LATEST + timedelta(seconds=1))], []),
        ([_sent("SM1", created=SINCE), _sent("SM2", created=LATEST)], ["SM1", "SM2"]),
        ([{**_sent("SM1"), "from": "+15005550009"}], []),
        ([{**_sent("SM1"), "to": "+15550000000"}], []),
        ([_sent("SM1", status="failed")], []),
        ([_sent("SM1", status="queued")], ["SM1"]),
        ([], []),
    ],
    ids=["same-body-in-the-window", "other-body", "before-the-window", "after-the-window", "both-window-edges",
         "other-sender", "other-number", "failed-not-sent", "still-queued", "none"],
)
def test_find_sent_lists_every_message_with_our_sender_number_and_body_created_in_the_window(
    channel: SmsChannel, mocked: responses.RequestsMock, listed: list[dict[str, Any]], expected: list[str]
) -> None:
    """To and From filter at Twilio and are checked again here, with the body, ``date_created`` and status."""
    mocked.get(URL, json=_listed(*listed), match=[_list_query()])
    assert channel.find_sent(_message(), earliest=SINCE, latest=LATEST) == expected


def test_with_a_messaging_service_the_look_up_matches_the_service_not_a_from_number(
    mocked: responses.RequestsMock,
) -> None:
    """TWILIO_FROM_NUMBER=MG...: Twilio chooses the From number, so the service SID is compared instead."""
    service = "MG" + "5" * 32
    sms = SmsChannel(settings=TwilioSettings(SID, TOKEN, service), timeout_seconds=3)
    ours = {**_sent("SM-OURS"), "messaging_service_sid": service}
    theirs = {**_sent("SM-OTHER"), "messaging_service_sid": "MG" + "6" * 32}
    mocked.get(URL, json=_listed(theirs, ours), match=[matchers.query_param_matcher({"To": TO, "PageSize": "50"})])
    assert sms.find_sent(_message(), earliest=SINCE, latest=SINCE + timedelta(minutes=1)) == ["SM-OURS"]
    sms.close()


def test_a_failed_look_up_is_transient_and_never_claims_a_send(
    channel: SmsChannel, mocked: responses.RequestsMock
) -> None:
    """Twilio unreachable: ``outcome_unknown: twilio lookup failed`` (retry later), not ``None`` (send)."""
    mocked.get(URL, body=requests.ConnectionError(f"refused {URL}"))
    with pytest.raises(TransientDeliveryError, match=r"^outcome_unknown: twilio lookup failed: ConnectionError$"):
        channel.find_sent(_message(), earliest=SINCE, latest=SINCE + timedelta(minutes=1))


@pytest.mark.parametrize(
    "exc",
    [requests.ReadTimeout("read timed out"), requests.ConnectionError(ProtocolError("Connection aborted."))],
    ids=["read-timeout", "connection-dropped-after-sending"],
)
def test_no_answer_after_sending_is_an_unknown_outcome(
    channel: SmsChannel, mocked: responses.RequestsMock, exc: Exception
) -> None:
    """A read timeout or an aborted connection after the request went out: ``outcome_unknown:``."""
    mocked.post(URL, body=exc)
    with pytest.raises(OutcomeUnknownError, match=r"^outcome_unknown: twilio"):
        channel.send(_message())


def test_a_refused_connection_is_a_plain_transient_failure(channel: SmsChannel, mocked: responses.RequestsMock) -> None:
    """Nothing was sent: a refused connection is not an unknown outcome."""
    mocked.post(URL, body=requests.ConnectionError("Max retries exceeded (NewConnectionError)"))
    with pytest.raises(TransientDeliveryError) as caught:
        channel.send(_message())
    assert not isinstance(caught.value, OutcomeUnknownError)


@pytest.mark.parametrize(("listed", "posts"), [([_sent("SM9")], 1), ([], 2)], ids=["found", "not-found"])
def test_after_a_timeout_the_next_attempt_asks_twilio_before_posting_again(
    mocked: responses.RequestsMock, listed: list[dict[str, Any]], posts: int
) -> None:
    """Found: delivered with its SID and no second POST. Not found: exactly one more POST."""
    sms = SmsChannel(settings=TwilioSettings(SID, TOKEN, FROM), timeout_seconds=3)
    h = Harness(sms)  # type: ignore[arg-type]
    mocked.post(URL, body=requests.ReadTimeout("read timed out"))
    mocked.get(URL, json=_listed(*listed))
    first = h.run(channel="sms", to=TO)
    assert first["error"].startswith("outcome_unknown:")
    mocked.replace(responses.POST, URL, json={"sid": "SM-NEW", "status": "queued"}, status=201)
    h.make_due()
    second = h.run(attempt=1, channel="sms", to=TO)
    assert second["outcome"] == "delivered"
    assert second["message_id"] == ("SM9" if posts == 1 else "SM-NEW")
    assert sum(1 for c in mocked.calls if c.request.method == "POST") == posts
    assert sum(1 for c in mocked.calls if c.request.method == "GET") == 1
