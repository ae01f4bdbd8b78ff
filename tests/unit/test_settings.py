"""Settings are validated at start-up and never show a secret in their repr."""

from __future__ import annotations

import pytest

from alert_worker.errors import ConfigurationError
from alert_worker.models import ChannelType
from alert_worker.settings import Settings, parse_queues

BASE = {"DATABASE_URL": "postgresql://alert:db-pass-canary@db:5432/alerts", "REDIS_URL": "redis://:redis-pass@r:6379/0"}


def test_defaults_follow_the_contract() -> None:
    s = Settings.from_env(BASE)
    assert (s.max_attempts, s.retry_delays, s.max_retry_delay_seconds) == (5, (5.0, 30.0, 120.0, 600.0), 3600.0)
    assert (s.job_timeout_seconds, s.stuck_after_seconds, s.sweep_grace_seconds) == (60, 900, 60)
    assert (s.sweep_interval_seconds, s.max_defer_seconds, s.send_timeout_seconds) == (30.0, 3600.0, 10.0)
    assert s.rate_limits.per_channel_minute == {ChannelType.EMAIL: 100, ChannelType.SLACK: 50, ChannelType.SMS: 10}
    assert s.rate_limits.per_recipient_hour == {ChannelType.EMAIL: 5, ChannelType.SLACK: 10, ChannelType.SMS: 3}
    assert s.rate_limits.global_per_minute == 500
    assert s.queues == ("alerts",) and s.resource_scope == "job" and s.auto_migrate is True
    assert s.slack.allowed_hosts == ("hooks.slack.com",)


def test_repr_hides_every_secret() -> None:
    env = {
        **BASE,
        "SMTP_PASSWORD": "smtp-pass-canary",
        "TWILIO_AUTH_TOKEN": "twilio-token-canary",
        "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/webhook-canary",
        "ALERT_RECIPIENT_HASH_SECRET": "hash-secret-canary",
    }
    text = repr(Settings.from_env(env))
    for canary in (
        "db-pass-canary",
        "redis-pass",
        "smtp-pass-canary",
        "twilio-token-canary",
        "webhook-canary",
        "hash-secret-canary",
    ):
        assert canary not in text
    assert "alert:***@db:5432/alerts" in text, "the DSN stays recognisable"


@pytest.mark.parametrize(
    ("port", "security"),
    [("465", "ssl"), ("587", "starttls"), ("25", "none"), ("2525", "none")],
    ids=["465-implicit-tls", "587-starttls", "25-plain", "other-plain"],
)
def test_smtp_security_defaults_by_port(port: str, security: str) -> None:
    assert Settings.from_env({**BASE, "SMTP_PORT": port}).smtp.security == security


def test_from_address_falls_back_to_the_smtp_user_and_login_needs_both() -> None:
    s = Settings.from_env({**BASE, "SMTP_HOST": "mx", "SMTP_USER": "bot@example.org"})
    assert s.smtp.from_address == "bot@example.org" and s.smtp.login is False
    assert Settings.from_env({**BASE, "SMTP_USER": "u", "SMTP_PASSWORD": "p"}).smtp.login is True


@pytest.mark.parametrize(
    ("env", "names"),
    [
        (
            {},
            {
                ChannelType.EMAIL: ("SMTP_HOST", "ALERTS_FROM_EMAIL"),
                ChannelType.SMS: ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM_NUMBER"),
            },
        ),
        (
            {
                "SMTP_HOST": "mx",
                "ALERTS_FROM_EMAIL": "a@example.org",
                "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
                "TWILIO_AUTH_TOKEN": "t",
            },
            {ChannelType.SMS: ("TWILIO_FROM_NUMBER",)},
        ),
    ],
    ids=["nothing-configured", "sms-missing-from-number"],
)
def test_disabled_channels_name_their_missing_variables(
    env: dict[str, str], names: dict[ChannelType, tuple[str, ...]]
) -> None:
    assert Settings.from_env({**BASE, **env}).missing_channel_settings() == names


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ALERT_MAX_ATTEMPTS", "0"),
        ("ALERT_MAX_ATTEMPTS", "five"),
        ("ALERT_RETRY_DELAYS", "5,-1"),
        ("ALERT_RETRY_DELAYS", "5,x"),
        ("ALERT_RATE_SMS_PER_MIN", "-1"),
        ("ALERT_RESOURCE_SCOPE", "thread"),
        ("SMTP_SECURITY", "tls"),
        ("SMTP_PORT", "70000"),
        ("ALERT_SEND_TIMEOUT_SECONDS", "nan"),
        ("ALERT_AUTO_MIGRATE", "maybe"),
        ("TWILIO_FROM_NUMBER", "555-1234"),
        ("ALERT_LOG_FORMAT", "xml"),
    ],
)
def test_a_bad_value_fails_at_start_up_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env({**BASE, name: value})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", 8), ("1", 1), ("16", 16), (" 64 ", 64)],
    ids=["default-8", "lowest", "sixteen", "highest-with-spaces"],
)
def test_alert_worker_threads_is_read_by_settings(value: str, expected: int) -> None:
    """The thread count is a setting like any other (``--threads`` still overrides it at ``run``)."""
    assert Settings.from_env({**BASE, "ALERT_WORKER_THREADS": value}).worker_threads == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "ALERT_WORKER_THREADS must be an integer 1..64, got '0'"),
        ("65", "ALERT_WORKER_THREADS must be an integer 1..64, got '65'"),
        ("-3", "ALERT_WORKER_THREADS must be an integer 1..64, got '-3'"),
        ("many", "ALERT_WORKER_THREADS must be an integer 1..64, got 'many'"),
        ("2.5", "ALERT_WORKER_THREADS must be an integer 1..64, got '2.5'"),
    ],
    ids=["zero", "sixty-five", "negative", "not-a-number", "fraction"],
)
def test_alert_worker_threads_outside_1_to_64_fails_at_start_up_with_a_clear_message(value: str, message: str) -> None:
    """One ``ConfigurationError`` naming the variable, the range and the bad value."""
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({**BASE, "ALERT_WORKER_THREADS": value})
    assert str(raised.value) == message


def test_the_stuck_threshold_must_exceed_the_job_timeout() -> None:
    """Otherwise a job still running would be reclaimed and its alert sent twice."""
    with pytest.raises(ConfigurationError, match="ALERT_STUCK_AFTER_SECONDS"):
        Settings.from_env({**BASE, "ALERT_JOB_TIMEOUT_SECONDS": "60", "ALERT_STUCK_AFTER_SECONDS": "60"})


@pytest.mark.parametrize(
    ("send", "job", "accepted"),
    [("59.9", "60", True), ("60", "60", False), ("61", "60", False), ("10", "5", False)],
    ids=["below", "equal", "above", "default-send-above-a-short-job"],
)
def test_the_send_timeout_must_be_below_the_job_timeout(send: str, job: str, accepted: bool) -> None:
    """One deadline for a whole send, inside its job: the job timeout never cuts a send off (§7.1)."""
    env = {**BASE, "ALERT_SEND_TIMEOUT_SECONDS": send, "ALERT_JOB_TIMEOUT_SECONDS": job}
    if accepted:
        assert Settings.from_env(env).send_timeout_seconds == float(send)
        return
    with pytest.raises(ConfigurationError, match=r"^ALERT_SEND_TIMEOUT_SECONDS must be below ALERT_JOB_TIMEOUT_SEC"):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("raw", "queues"),
    [("", ("alerts",)), ("high,alerts,high, low ", ("high", "alerts", "low")), (",,", ("alerts",))],
    ids=["default", "order-kept-duplicates-dropped", "empty-items"],
)
def test_rq_queues_parsing(raw: str, queues: tuple[str, ...]) -> None:
    assert parse_queues(raw) == queues


@pytest.mark.parametrize(
    ("env", "port"),
    [
        ({"ALERT_METRICS_PORT": "9108"}, 9108),
        ({"ALERT_METRICS_PORT": "9108", "ALERT_METRICS_PORT_OFFSET": "2"}, 9110),
        ({"ALERT_METRICS_PORT_OFFSET": "2"}, 0),
    ],
    ids=["base", "template-instance-2", "offset-without-port-stays-off"],
)
def test_the_metrics_port_is_the_base_plus_the_instance_offset(env: dict[str, str], port: int) -> None:
    """alert-worker@N sets ALERT_METRICS_PORT_OFFSET=N: one env file, one port per instance."""
    assert Settings.from_env({**BASE, **env}).metrics_port == port


@pytest.mark.parametrize(
    "env",
    [
        {"ALERT_METRICS_PORT": "9108", "ALERT_METRICS_PORT_OFFSET": "x"},
        {"ALERT_METRICS_PORT": "65535", "ALERT_METRICS_PORT_OFFSET": "1"},
        {"ALERT_LOG_LEVEL": "chatty"},
        {"ALERT_RQ_LOG_LEVEL": "verbose"},
    ],
    ids=["offset-not-a-number", "past-65535", "log-level", "rq-log-level"],
)
def test_a_bad_port_offset_or_log_level_is_refused_by_name(env: dict[str, str]) -> None:
    named = next(name for name in env if "OFFSET" in name or "LEVEL" in name)
    with pytest.raises(ConfigurationError, match=named):
        Settings.from_env({**BASE, **env})


def test_log_levels_default_to_info_and_rqs_to_warning() -> None:
    settings = Settings.from_env({**BASE, "ALERT_LOG_LEVEL": "debug"})
    assert (settings.log_level, settings.rq_log_level) == ("DEBUG", "WARNING")
