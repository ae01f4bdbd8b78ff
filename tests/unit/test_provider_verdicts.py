"""Limits, suppression and cooldown decide on what the provider said (docs/contract.md §7.2), as pure tables.

Which failures are *definite* (refused, or never received: the rate-limit slots go back), which SMTP replies
suppress a recipient, that the configured default webhook is never suppressed, and that a cooldown's key is
the normalized destination. The same rules against the real Redis, Postgres and SMTP server are in
tests/integration/test_feedback_decisions.py.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import structlog
from structlog.testing import capture_logs
from urllib3.exceptions import MaxRetryError, NameResolutionError, NewConnectionError, ProtocolError, ProxyError

from alert_worker.channel_settings import SmtpSettings
from alert_worker.channels.email import EmailChannel
from alert_worker.channels.http import map_request_errors
from alert_worker.channels.slack import SlackChannel
from alert_worker.channels.smtp_errors import classify_smtp_error
from alert_worker.cooldown import destination_hash
from alert_worker.delivery import recipient_identity
from alert_worker.errors import (
    DeliveryError,
    OutcomeUnknownError,
    PermanentDeliveryError,
    RecipientRejectedError,
    SlowDownError,
    TransientDeliveryError,
)
from alert_worker.executor import DeliveryExecutor, DeliveryRequest
from alert_worker.feedback import ProviderFeedback
from alert_worker.models import ChannelType, DeliveryRow, DeliveryStatus, Message
from alert_worker.rate_limit import Acquisition, RateDecision
from alert_worker.retry import RetryPolicy
from alert_worker.settings import Settings
from tests.support.fakes import FakeChannel, FakeGauge, FakeLimiter, FakePoisonQueue, FakeStore, RecordingScheduler
from tests.support.processes import free_port
from tests.support.smtp import SmtpSink

SENDER = "alerts@example.org"
SECRET = "secret"
HOOK = "https://hooks.slack.com/services/T0/B0/verdictsecret"


# -- which SMTP replies suppress ---------------------------------------------------------------------
def _rcpt(reply: bytes, code: int = 550) -> smtplib.SMTPRecipientsRefused:
    return smtplib.SMTPRecipientsRefused({"oncall@example.com": (code, reply)})


SMTP_VERDICTS = [
    (_rcpt(b"5.1.1 <oncall@example.com>: Recipient address rejected: User unknown"), True),
    (_rcpt(b"5.1.2 Host or domain name not found"), True),
    (_rcpt(b"5.1.10 Recipient address has null MX", code=556), True),
    (_rcpt(b"5.2.1 Mailbox disabled, not accepting messages"), True),
    (_rcpt(b"5.1.0 <alerts@example.org>: Sender address rejected: User unknown in local recipient table"), False),
    (_rcpt(b"5.1.1 <alerts@example.org>: Sender address rejected: undeliverable address"), False),
    (_rcpt(b"5.1.1 <alerts@example.org>: unknown user"), False),
    (_rcpt(b"5.1.7 Bad sender's mailbox address syntax", code=553), False),
    (_rcpt(b"5.1.8 Bad sender's system address"), False),
    (_rcpt(b"5.1.3 Bad recipient address syntax", code=553), False),
    (_rcpt(b"5.7.1 Relaying denied", code=554), False),
    (_rcpt(b"5.7.26 Unauthenticated email is not accepted", code=550), False),
    (_rcpt(b"User unknown"), False),
    (smtplib.SMTPSenderRefused(550, b"5.1.1 unknown", SENDER), False),
    (smtplib.SMTPDataError(550, b"5.1.1 user unknown"), False),
    (smtplib.SMTPResponseException(550, b"5.2.1 mailbox disabled"), False),
    (smtplib.SMTPException("server said: 550 5.1.1 no such user"), False),
]
SMTP_VERDICT_IDS = [
    "rcpt-5.1.1-no-such-user",
    "rcpt-5.1.2-no-such-domain",
    "rcpt-5.1.10-null-mx",
    "rcpt-5.2.1-mailbox-disabled",
    "rcpt-5.1.0-postfix-sender-rejected",
    "rcpt-5.1.1-text-says-sender",
    "rcpt-5.1.1-text-names-the-from-address",
    "rcpt-5.1.7-sender-syntax",
    "rcpt-5.1.8-sender-domain",
    "rcpt-5.1.3-not-listed",
    "rcpt-5.7.1-policy",
    "rcpt-5.7.26-policy",
    "rcpt-550-without-enhanced-code",
    "mail-from-5.1.1",
    "after-data-5.1.1",
    "other-command-5.2.1",
    "quoted-in-text-5.1.1",
]


@pytest.mark.parametrize(("exc", "suppresses"), SMTP_VERDICTS, ids=SMTP_VERDICT_IDS)
def test_only_5_1_1_5_1_2_5_1_10_and_5_2_1_given_to_rcpt_to_about_the_recipient_suppress(
    exc: Exception, suppresses: bool
) -> None:
    """Anything said about the sender, to MAIL FROM, after DATA, or with another code is a plain permanent error."""
    error = classify_smtp_error(exc, sender=SENDER)
    assert isinstance(error, RecipientRejectedError) is suppresses
    assert isinstance(error, PermanentDeliveryError), "still poisons the delivery, whatever it suppresses"


# -- which failures are definite ---------------------------------------------------------------------
def _connection_error(reason: Exception) -> requests.ConnectionError:
    return requests.ConnectionError(MaxRetryError(None, "/x", reason))  # type: ignore[arg-type]


HTTP_FAILURES = [
    (_connection_error(NewConnectionError(None, "[Errno 111] Connection refused")), True),  # type: ignore[arg-type]
    (_connection_error(NameResolutionError("hooks.slack.com", None, OSError("no such host"))), True),  # type: ignore[arg-type]
    (requests.ConnectTimeout("connect timed out"), True),
    (requests.ReadTimeout("read timed out"), False),
    (requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError())), False),
    (requests.exceptions.ProxyError(MaxRetryError(None, "/x", ProxyError("proxy", OSError()))), False),  # type: ignore[arg-type]
    (_connection_error(ProxyError("proxy", NewConnectionError(None, "refused"))), False),  # type: ignore[arg-type]
    (requests.ConnectionError("no cause given"), False),
    (requests.exceptions.ChunkedEncodingError("broken answer"), False),
]
HTTP_IDS = [
    "connection-refused",
    "dns-failure",
    "connect-timeout",
    "read-timeout",
    "dropped-after-sending",
    "proxy-error",
    "refused-through-a-proxy",
    "connection-error-without-cause",
    "broken-answer",
]


@pytest.mark.parametrize(("exc", "definite"), HTTP_FAILURES, ids=HTTP_IDS)
def test_an_http_failure_is_definite_only_when_the_connection_itself_failed(exc: Exception, definite: bool) -> None:
    """Refused, DNS, connect timeout: nothing left. Anything once connected, or through a proxy: maybe sent."""
    with pytest.raises(DeliveryError) as caught, map_request_errors("slack"):
        raise exc
    assert caught.value.definite is definite


class SlackAnswer:
    """What ``SlackChannel`` reads of a ``requests.Response``."""

    def __init__(self, status: int, body: str) -> None:
        self.status_code, self.text, self.headers = status, body, {"Retry-After": "5"}


def _slack_error(status: int, body: str) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        SlackChannel._receipt(SlackAnswer(status, body))  # type: ignore[arg-type]
    return caught.value


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (429, "rate_limited", SlowDownError),
        (503, "", TransientDeliveryError),
        (404, "no_service", RecipientRejectedError),
        (400, "invalid_payload", PermanentDeliveryError),
        (302, "", PermanentDeliveryError),
    ],
    ids=["429", "503", "404-no_service", "400", "302"],
)
def test_every_slack_error_answer_is_definite(status: int, body: str, error: type[DeliveryError]) -> None:
    """Slack answered and did not post: the attempt used nothing of the limits."""
    answer = _slack_error(status, body)
    assert type(answer) is error and answer.definite


def test_a_slack_2xx_that_is_not_ok_and_an_unknown_outcome_are_not_definite() -> None:
    """A 2xx may have posted; an unknown outcome may have reached Slack: they keep their slots."""
    assert not _slack_error(201, "created").definite
    assert not OutcomeUnknownError("read timeout").definite


@pytest.mark.parametrize(
    ("status", "code"),
    [(503, None), (400, 21610), (429, 20429), (400, 21211)],
    ids=["503", "21610-unsubscribed", "429-too-many", "21211-invalid-to"],
)
def test_every_twilio_error_answer_is_definite(status: int, code: int | None) -> None:
    from twilio.base.exceptions import TwilioRestException

    from alert_worker.channel_settings import TwilioSettings
    from alert_worker.channels.sms import SmsChannel

    channel = SmsChannel(settings=TwilioSettings("AC" + "1" * 32, "t" * 32, "+15005550006"), timeout_seconds=5)
    answer = TwilioRestException(status, "https://api.twilio.com/x", code=code)
    assert channel._classify(answer).definite


@pytest.mark.parametrize(
    ("stage", "reply", "definite"),
    [
        ("rcpt", "450 4.2.1 Mailbox busy", True),
        ("rcpt", "550 5.1.0 Sender address rejected", True),
        ("data", "554 5.7.1 Message rejected as spam", False),
        ("data", "451 4.3.0 try later", False),
        ("data", "DROP", False),
    ],
    ids=["rcpt-450", "rcpt-550-5.1.0", "after-data-554", "after-data-451", "dropped-after-data"],
)
def test_an_smtp_failure_is_definite_only_before_the_message_body_was_written(
    smtp_sink: SmtpSink, stage: str, reply: str, definite: bool
) -> None:
    """A reply to RCPT TO: the server has nothing. Once the body went out, the relay may have kept it."""
    (smtp_sink.rcpt_replies if stage == "rcpt" else smtp_sink.data_replies).append(reply)
    with pytest.raises(DeliveryError) as caught:
        _email_channel(smtp_sink.port).send(_mail())
    assert caught.value.definite is definite


def test_an_smtp_server_that_refuses_the_connection_is_a_definite_failure() -> None:
    with pytest.raises(TransientDeliveryError) as caught:
        _email_channel(free_port()).send(_mail())
    assert caught.value.definite


def _email_channel(port: int) -> EmailChannel:
    settings = SmtpSettings("127.0.0.1", port, "", "", SENDER, "none")
    return EmailChannel(settings=settings, timeout_seconds=5)


def _mail() -> Message:
    return Message(delivery_id="m-1", channel=ChannelType.EMAIL, recipient="oncall@example.com", subject="s", body="b")


# -- the executor gives a definite failure's slots back ----------------------------------------------
class Harness:
    def __init__(self, *errors: DeliveryError) -> None:
        self.store = FakeStore()
        self.channel = FakeChannel(*errors)
        self.limiter = FakeLimiter()
        self.executor = DeliveryExecutor(
            store=self.store,
            poison_queue=FakePoisonQueue(self.store, FakeGauge()),
            limiter=self.limiter,
            channel_factory=lambda _: self.channel,
            scheduler=RecordingScheduler(),
            retry_policy=RetryPolicy(max_attempts=5, delays=(5.0,), max_retry_delay_seconds=3600.0),
            rate_limits=Settings(database_url="", redis_url="").rate_limits,
            queue_depth=FakeGauge(),
            hash_secret=SECRET,
            rand=lambda: 0.5,
        )

    def run(self) -> dict[str, Any]:
        request = DeliveryRequest(
            delivery_id="d-1", channel=ChannelType.EMAIL, recipient="ops@example.com", subject="s", body="b"
        )
        return dict(self.executor.run(request))


@pytest.mark.parametrize(
    ("error", "given_back"),
    [
        (TransientDeliveryError("smtp_connection_error: ConnectionRefusedError", definite=True), True),
        (PermanentDeliveryError("smtp recipient refused 550 5.1.0: sender rejected", definite=True), True),
        (TransientDeliveryError("slack request error: ChunkedEncodingError"), False),
        (OutcomeUnknownError("smtp no reply after end of DATA: TimeoutError"), False),
    ],
    ids=["definite-transient", "definite-permanent", "not-known-to-be-unsent", "outcome-unknown"],
)
def test_a_failed_attempt_gives_back_its_own_check_only_when_definite(error: DeliveryError, given_back: bool) -> None:
    h = Harness(error)
    h.run()
    own_check = Acquisition(keys=("email:" + _email_hash(),), member="check-1")
    assert h.limiter.released == ([own_check] if given_back else [])


def test_a_delivered_attempt_keeps_its_slots() -> None:
    h = Harness()
    assert h.run()["outcome"] == "delivered" and h.limiter.released == []


def _email_hash() -> str:
    return recipient_identity(SECRET, ChannelType.EMAIL, "ops@example.com")[0]


def test_the_real_limiter_logs_and_keeps_the_slots_when_redis_cannot_be_asked() -> None:
    """A release that fails is a side effect lost, never a failed delivery."""
    import fakeredis

    from alert_worker.rate_limit import RateLimiter

    server = fakeredis.FakeServer()
    limiter = RateLimiter(client=fakeredis.FakeRedis(server=server))
    decision = RateDecision(allowed=True, acquisition=Acquisition(keys=("alert:rl:x",), member="m"))
    server.connected = False  # every command raises ConnectionError
    with capture_logs() as logs:
        limiter.after_failure(decision, TransientDeliveryError("refused", definite=True), log=structlog.get_logger())
    assert [(e["event"], e["log_level"]) for e in logs] == [("rate_limit_slots_kept", "warning")]


# -- the configured default webhook is never suppressed ----------------------------------------------
class FakeSuppressions:
    def __init__(self) -> None:
        self.added: list[str] = []

    def reason(self, channel: str, rhash: str) -> str | None:
        return None

    def add(self, *, channel: str, rhash: str, masked: str, reason: str, source_delivery_id: str | None = None) -> bool:
        self.added.append(rhash)
        return True


@pytest.fixture
def suppressions() -> Iterator[FakeSuppressions]:
    yield FakeSuppressions()


def _feedback(suppressions: FakeSuppressions, default_webhook_url: str = HOOK) -> ProviderFeedback:
    return ProviderFeedback(
        cooldowns=None,  # type: ignore[arg-type]  # not reached: the error is no slow-down
        suppressions=suppressions,  # type: ignore[arg-type]
        outcomes=None,  # type: ignore[arg-type]
        hash_secret=SECRET,
        default_webhook_url=default_webhook_url,
    )


def _slack_row(recipient: str) -> DeliveryRow:
    rhash, _ = recipient_identity(SECRET, ChannelType.SLACK, recipient, default_webhook_url=HOOK)
    return DeliveryRow(
        id="d-1",
        channel="slack",
        status=DeliveryStatus.IN_PROGRESS,
        attempts=0,
        deferrals=0,
        recipient_hash=rhash,
        payload={"recipient": recipient, "subject": "s", "body": "b"},
        queue="alerts",
        deferred_since=None,
        next_attempt_at=None,
        claim_token="t",
    )


@pytest.mark.parametrize(
    "recipient",
    ["default", "", "  default ", HOOK, HOOK + "?x=1", HOOK.replace("https://hooks", "HTTPS://HOOKS")],
    ids=["default", "empty", "default-with-spaces", "the-url-itself", "the-url-with-a-query", "the-url-in-capitals"],
)
def test_a_404_from_the_configured_default_webhook_is_logged_and_never_suppressed(
    suppressions: FakeSuppressions, recipient: str
) -> None:
    feedback = _feedback(suppressions)
    row = _slack_row(recipient)
    message = Message(delivery_id="d-1", channel=ChannelType.SLACK, recipient=HOOK, subject="s", body="b")
    with capture_logs() as logs:
        rejected = RecipientRejectedError("slack 404 no_service")
        feedback.after_failure(row, None, message, rejected, log=structlog.get_logger())  # type: ignore[arg-type]
    log_lines = [e for e in logs if e["event"] == "default_webhook_rejected"]
    assert suppressions.added == []
    assert [(e["log_level"], e["reason"]) for e in log_lines] == [("error", "slack 404 no_service")]


def test_a_404_from_a_webhook_given_as_the_recipient_suppresses_it(suppressions: FakeSuppressions) -> None:
    other = "https://hooks.slack.com/services/T0/B9/anotherhook"
    message = Message(delivery_id="d-1", channel=ChannelType.SLACK, recipient=other, subject="s", body="b")
    rejected = RecipientRejectedError("slack 404 no_service")
    _feedback(suppressions).after_failure(_slack_row(other), None, message, rejected, log=structlog.get_logger())  # type: ignore[arg-type]
    assert suppressions.added == [_slack_row(other).recipient_hash]


# -- a cooldown's key is the normalized destination --------------------------------------------------
@pytest.mark.parametrize(
    "variant",
    [HOOK + "?x=1", HOOK + "#frag", HOOK.replace("https://hooks.slack.com", "HTTPS://Hooks.Slack.COM"), f"  {HOOK} "],
    ids=["query", "fragment", "scheme-and-host-case", "surrounding-spaces"],
)
def test_every_spelling_of_one_webhook_has_one_cooldown_key(variant: str) -> None:
    assert destination_hash(SECRET, "slack", variant) == destination_hash(SECRET, "slack", HOOK)


def test_different_webhooks_still_have_different_cooldown_keys() -> None:
    other = HOOK.replace("verdictsecret", "othersecret")
    assert destination_hash(SECRET, "slack", other) != destination_hash(SECRET, "slack", HOOK)
    assert destination_hash(SECRET, "email", "SMTP.example.org:587") == destination_hash(
        SECRET, "email", "smtp.example.org:587"
    )
