"""The SMS unknown-outcome look-up takes a listed message only when it can be nobody else's, and a send cut
off by the job timeout is an unknown outcome (docs/contract.md §7.1). Executor and feedback on fakes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from structlog.testing import capture_logs

from alert_worker.errors import OutcomeUnknownError
from alert_worker.setbacks import SEND_INTERRUPTED_NOTE
from tests.unit.test_feedback_executor import Harness, SmsLikeChannel

PHONE = "+15551234567"
UNKNOWN = OutcomeUnknownError("twilio connection dropped after sending: ConnectionError")


class JobTimeout(Exception):
    """Stands in for rq's ``JobTimeoutException`` (an ``Exception`` raised inside the running send)."""


class TimedOutChannel(SmsLikeChannel):
    """The first send is cut off by a job timeout after the request went out; later ones are accepted."""

    def send(self, message):  # type: ignore[no-untyped-def]
        receipt = super().send(message)
        if len(self.sent) == 1:
            raise JobTimeout("Task exceeded maximum timeout value (5 seconds)")
        return receipt


def _after_one_unknown(found: str | list[str] | None) -> tuple[Harness, SmsLikeChannel]:
    channel = SmsLikeChannel(UNKNOWN, found=found)
    h = Harness(channel)
    assert h.run(channel="sms", to=PHONE)["error"].startswith("outcome_unknown:")
    h.make_due()
    return h, channel


def test_the_look_up_window_is_the_unknown_attempt_less_5s_to_plus_send_timeout_and_a_minute() -> None:
    h, channel = _after_one_unknown("SM1")
    started = h.outcomes.started["d-1"]
    h.run(attempt=1, channel="sms", to=PHONE)
    assert channel.windows == [(started - timedelta(seconds=5), started + timedelta(seconds=10 + 60))]


@pytest.mark.parametrize(
    ("listed", "held", "rival", "expected_sid", "sends"),
    [
        (["SM-A"], {}, False, "SM-A", 1),
        (["SM-A", "SM-A2"], {}, False, None, 2),
        (["SM-B"], {"SM-B": "b"}, False, None, 2),
        (["SM-A", "SM-B"], {"SM-B": "b"}, False, "SM-A", 1),
        (["SM-A"], {}, True, None, 2),
        ([], {}, False, None, 2),
    ],
    ids=["one-match", "several-match", "only-match-is-another-deliverys", "the-other-one-is-held",
         "another-delivery-of-that-text-in-flight", "none"],
)
def test_only_a_single_match_nobody_else_holds_is_taken_otherwise_the_sms_is_sent_again(
    listed: list[str], held: dict[str, str], rival: bool, expected_sid: str | None, sends: int
) -> None:
    h, channel = _after_one_unknown(listed)
    h.outcomes.held.update(held)
    h.outcomes.rival = rival
    result = h.run(attempt=1, channel="sms", to=PHONE)
    assert result["outcome"] == "delivered"
    assert len(channel.sent) == sends
    if expected_sid is not None:
        assert result["message_id"] == expected_sid
    else:
        assert result["message_id"] != (listed[0] if listed else None)


def test_a_match_another_delivery_records_first_is_not_taken_and_the_sms_is_sent_again() -> None:
    """Between the look-up and ``mark_delivered`` B records SM-B: the unique index refuses A, A sends."""
    h, _ = _after_one_unknown("SM-B")
    h.run("b", channel="sms", to=PHONE)  # B delivered; the fake channel gives it its own id
    h.store.rows["b"].message_id = "SM-B"  # B's real SID, unknown to the fake outcomes' "held" map
    with capture_logs() as logs:
        result = h.run(attempt=1, channel="sms", to=PHONE)
    assert result["outcome"] == "delivered" and result["message_id"] != "SM-B"
    assert any(e["event"] == "provider_lookup_match_taken" for e in logs)


def test_our_own_acceptance_is_recorded_even_if_another_row_holds_its_id() -> None:
    """Nothing lost: the row is delivered without the id, and the conflict is logged as an error."""
    h = Harness(SmsLikeChannel())
    h.run("other", channel="sms", to=PHONE)
    h.store.rows["other"].message_id = "<d-1.0@test>"  # what the fake channel answers for d-1's send
    with capture_logs() as logs:
        result = h.run(channel="sms", to=PHONE)
    assert result["outcome"] == "delivered"
    assert h.store.rows["d-1"].message_id is None and result["message_id"] is None, "the result says what the row says"
    assert any(e["event"] == "provider_message_id_taken" and e["log_level"] == "error" for e in logs)


def test_a_job_timeout_during_the_send_is_an_unknown_outcome_and_the_retry_looks_up_first() -> None:
    """Not a crash (``worker_error``): ``outcome_unknown:``, recorded for the look-up; the job still fails."""
    channel = TimedOutChannel(found="SM-1")
    h = Harness(channel)
    with pytest.raises(JobTimeout) as caught:
        h.run(channel="sms", to=PHONE)
    assert SEND_INTERRUPTED_NOTE in caught.value.__notes__
    row = h.store.get("d-1")
    assert row is not None and (row.status.value, row.attempts) == ("pending", 1)
    assert h.store.rows["d-1"].error == "outcome_unknown: send interrupted: JobTimeout"
    assert "d-1" in h.outcomes.started and h.metrics.unknown_by == ["sms"]
    h.make_due()
    result = h.run(attempt=1, channel="sms", to=PHONE)
    assert (result["outcome"], result["message_id"]) == ("delivered", "SM-1")
    assert len(channel.sent) == 1, "found at Twilio: not sent again"
