"""The fake providers follow their scripts and count exactly what they accepted."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

import pytest
import requests

from tests.crash.fake_providers import ProviderLog, max_window_rate, running_smtp, running_webhook, tag


def _mail(delivery_id: str, attempt: int) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "a@crash.test"
    mail["To"] = "b@crash.test"
    mail["Subject"] = "s"
    mail["Message-ID"] = f"<{delivery_id}.{attempt}@crash.test>"
    mail.set_content("x")
    return mail


def test_smtp_fake_fails_then_accepts_as_scripted_and_records_the_delivery_id() -> None:
    """451 then permanent 550 then accepted, attributed by Message-ID."""
    log = ProviderLog(scripts={"d-1": ["transient", "permanent"]})
    with running_smtp(log) as port:
        for attempt, code in enumerate((451, 550)):
            with pytest.raises(smtplib.SMTPDataError) as caught, smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
                smtp.send_message(_mail("d-1", attempt))
            assert caught.value.smtp_code == code
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
            smtp.send_message(_mail("d-1", 2))
    assert log.accepted_counts() == {"d-1": 1}
    assert log.accepted[0].attempt == 2


def test_smtp_fake_accept_drop_records_the_message_but_the_client_sees_a_disconnect() -> None:
    """The duplicate-forcing case: the provider has it, the sender cannot know."""
    log = ProviderLog(scripts={"d-2": ["accept_drop"]})
    with running_smtp(log) as port, pytest.raises(smtplib.SMTPServerDisconnected):
        smtp = smtplib.SMTP("127.0.0.1", port, timeout=5)
        smtp.send_message(_mail("d-2", 0))
    assert log.accepted_counts() == {"d-2": 1}


@pytest.mark.parametrize(
    ("behaviour", "status", "retry_after"),
    [("transient", 503, None), ("throttle:7", 429, "7"), ("permanent", 403, None), ("ok", 200, None)],
    ids=["503", "429-retry-after", "404", "accepted"],
)
def test_webhook_fake_answers_as_scripted(behaviour: str, status: int, retry_after: str | None) -> None:
    """Each behaviour maps to its HTTP status; only ``ok`` is recorded."""
    log = ProviderLog(scripts={"d-3": [behaviour]})
    with running_webhook(log) as base:
        answer = requests.post(f"{base}/services/T/B/x", json={"text": f"hi {tag('d-3')}"}, timeout=5)
    assert answer.status_code == status
    assert answer.headers.get("Retry-After") == retry_after
    assert log.accepted_counts() == ({"d-3": 1} if status == 200 else {})


def test_webhook_fake_hang_times_the_client_out_and_accepts_nothing() -> None:
    """A hang longer than the client's timeout is a timeout, not an acceptance."""
    log = ProviderLog(scripts={"d-4": ["hang:2"]})
    with running_webhook(log) as base, pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{base}/hook", json={"text": tag("d-4")}, timeout=0.3)
    assert log.accepted_counts() == {}


@pytest.mark.parametrize(
    ("times", "window", "expected"),
    [([], 60, 0), ([0, 30, 60], 60, 3), ([0, 30, 60.001], 60, 2), ([0, 1, 2, 100, 101], 60, 3)],
    ids=["none", "closed-window-counts-both-ends", "just-outside", "two-bursts"],
)
def test_max_window_rate_counts_the_busiest_closed_window(times: list[float], window: float, expected: int) -> None:
    """The provider-side figure the suite compares with the limit."""
    assert max_window_rate(times, window) == expected
