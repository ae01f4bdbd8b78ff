"""Settings read once from the environment, validated up front, secrets redacted in ``repr``.

A bad value raises ``ConfigurationError`` naming the variable, so a misconfigured worker fails at
start-up instead of at the first 3 a.m. alert. The variables are listed in README.md.
"""

from __future__ import annotations

import math
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from urllib.parse import urlsplit

from alert_worker.channel_settings import (
    DEFAULT_TWILIO_API_BASE_URL,
    SlackSettings,
    SmtpSettings,
    TwilioSettings,
    is_bare_address,
    is_loopback_host,
)
from alert_worker.cluster_settings import cluster_from_env, connection_url
from alert_worker.errors import ConfigurationError
from alert_worker.models import ChannelType
from alert_worker.redaction import redact_url
from alert_worker.validation import is_e164

TWILIO_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
TWILIO_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")
DEFAULT_WORKER_THREADS, MAX_WORKER_THREADS = 8, 64  # ALERT_WORKER_THREADS, docs/contract.md §6.1
MAX_SECONDS = 10 * 365 * 86400  # seconds are finite and below this (§7.6): Postgres refuses an inf interval


def _text(env: Mapping[str, str], name: str, default: str = "") -> str:
    return env.get(name, default).strip()


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    raw = _text(env, name)
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigurationError(f"{name} must be <= {maximum}, got {value}")
    return value


def _worker_threads(env: Mapping[str, str]) -> int:
    raw = _text(env, "ALERT_WORKER_THREADS") or str(DEFAULT_WORKER_THREADS)
    value = int(raw) if raw.lstrip("-").isdecimal() else 0
    if not 1 <= value <= MAX_WORKER_THREADS:
        raise ConfigurationError(f"ALERT_WORKER_THREADS must be an integer 1..{MAX_WORKER_THREADS}, got {raw!r}")
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(env: Mapping[str, str], name: str, default: str) -> str:
    value = _text(env, name, default).upper() or default
    if value not in LOG_LEVELS:
        raise ConfigurationError(f"{name} must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return value


def _metrics_port(env: Mapping[str, str]) -> int:
    """``ALERT_METRICS_PORT`` plus ``ALERT_METRICS_PORT_OFFSET`` (a systemd template sets it to ``%i``), so
    several instances on one host share one env file and each serves its own port; 0 (off) stays off."""
    base = _int(env, "ALERT_METRICS_PORT", 0, minimum=0)
    offset = _int(env, "ALERT_METRICS_PORT_OFFSET", 0, minimum=0)
    if base == 0:
        return 0
    if base + offset > 65535:
        raise ConfigurationError(
            f"ALERT_METRICS_PORT + ALERT_METRICS_PORT_OFFSET must be <= 65535, got {base + offset}"
        )
    return base + offset


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = _text(env, name)
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, got {raw!r}")
    if not minimum <= value <= MAX_SECONDS:
        raise ConfigurationError(f"{name} must be between {minimum:g} and {MAX_SECONDS}, got {raw}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _text(env, name).lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be 0 or 1, got {raw!r}")


def parse_delays(raw: str, *, name: str = "ALERT_RETRY_DELAYS") -> tuple[float, ...]:
    """``"5,30,120"`` -> ``(5.0, 30.0, 120.0)``; every delay positive and finite, at least one."""
    try:
        delays = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigurationError(f"{name} must be comma-separated seconds, got {raw!r}") from None
    if not delays or any(not 0 < d <= MAX_SECONDS for d in delays):  # NaN and inf fail too
        raise ConfigurationError(f"{name} must list positive, finite seconds (at most {MAX_SECONDS}), got {raw!r}")
    return delays


def parse_queues(raw: str) -> tuple[str, ...]:
    """Comma-separated queue names, order kept, duplicates dropped; default ``alerts``."""
    names: list[str] = []
    for part in raw.split(","):
        name = part.strip()
        if name and name not in names:
            names.append(name)
    return tuple(names) or ("alerts",)


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` sends in any rolling window of ``window_seconds``; 0 disables."""

    name: str
    limit: int
    window_seconds: int


@dataclass(frozen=True)
class RateLimits:
    per_channel_minute: Mapping[ChannelType, int]
    per_recipient_hour: Mapping[ChannelType, int]
    global_per_minute: int

    def for_delivery(self, channel: ChannelType) -> tuple[RateLimit, RateLimit, RateLimit]:
        """The three limits a send on ``channel`` must fit in (channel, recipient, global)."""
        return (
            RateLimit("channel", self.per_channel_minute[channel], 60),
            RateLimit("recipient", self.per_recipient_hour[channel], 3600),
            RateLimit("global", self.global_per_minute, 60),
        )


@dataclass(frozen=True)
class Settings:
    database_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    queues: tuple[str, ...] = ("alerts",)
    resource_scope: str = "job"
    job_timeout_seconds: int = 60
    stuck_after_seconds: int = 900
    max_attempts: int = 5
    retry_delays: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0)
    max_retry_delay_seconds: float = 3600.0
    max_defer_seconds: float = 3600.0
    cooldown_seconds: float = 30.0  # a provider's "slow down" without Retry-After (docs/contract.md §6.2)
    channel_pause_seconds: float = 300.0  # a channel whose own settings were refused (docs/contract.md §7.7)
    digest: bool = True  # ALERT_DIGEST: held deliveries ride in the recipient's next message (§8)
    digest_max_items: int = 50  # ALERT_DIGEST_MAX_ITEMS: deliveries in one message, the carrier included
    send_timeout_seconds: float = 10.0
    sweep_grace_seconds: int = 60
    sweep_interval_seconds: float = 30.0
    auto_migrate: bool = True
    recipient_hash_secret: str = field(default="", repr=False)
    redis_key_prefix: str = "alert:"
    max_queue_depth: int = 10_000
    metrics_port: int = 0
    worker_threads: int = DEFAULT_WORKER_THREADS  # ALERT_WORKER_THREADS; ``--threads`` overrides
    log_format: str = "json"
    log_level: str = "INFO"  # ALERT_LOG_LEVEL: this package's log lines
    rq_log_level: str = "WARNING"  # ALERT_RQ_LOG_LEVEL: RQ's own lines ("Job OK" per job is INFO)
    db_pooler: str = ""
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str = ""
    rate_limits: RateLimits = field(
        default_factory=lambda: RateLimits(
            per_channel_minute={ChannelType.EMAIL: 100, ChannelType.SLACK: 50, ChannelType.SMS: 10},
            per_recipient_hour={ChannelType.EMAIL: 5, ChannelType.SLACK: 10, ChannelType.SMS: 3},
            global_per_minute=500,
        )
    )
    smtp: SmtpSettings = field(default_factory=lambda: SmtpSettings("", 587, "", "", "", "starttls"))
    slack: SlackSettings = field(default_factory=lambda: SlackSettings("", ("hooks.slack.com",)))
    twilio: TwilioSettings = field(default_factory=lambda: TwilioSettings("", "", ""))

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("database_url", "redis_url"):
                value = redact_url(value)
            elif not f.repr:
                value = "***" if value else ""
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build and validate settings; raises ``ConfigurationError`` naming the bad variable."""
        env = os.environ if env is None else env
        scope = _text(env, "ALERT_RESOURCE_SCOPE", "job").lower() or "job"
        if scope not in ("job", "process"):
            raise ConfigurationError(f"ALERT_RESOURCE_SCOPE must be 'job' or 'process', got {scope!r}")
        log_format = _text(env, "ALERT_LOG_FORMAT", "json").lower() or "json"
        if log_format not in ("json", "console"):
            raise ConfigurationError(f"ALERT_LOG_FORMAT must be 'json' or 'console', got {log_format!r}")
        job_timeout = _int(env, "ALERT_JOB_TIMEOUT_SECONDS", 60, minimum=1)
        stuck_after = _int(env, "ALERT_STUCK_AFTER_SECONDS", 900, minimum=1)
        if stuck_after <= job_timeout:
            raise ConfigurationError(
                "ALERT_STUCK_AFTER_SECONDS must exceed ALERT_JOB_TIMEOUT_SECONDS "
                f"({stuck_after} <= {job_timeout}): a running job would be reclaimed"
            )
        if (send_timeout := _float(env, "ALERT_SEND_TIMEOUT_SECONDS", 10.0, minimum=0.1)) >= job_timeout:
            raise ConfigurationError(  # a send is one deadline inside its job (docs/contract.md §7.1)
                "ALERT_SEND_TIMEOUT_SECONDS must be below ALERT_JOB_TIMEOUT_SECONDS "
                f"({send_timeout:g} >= {job_timeout})"
            )
        prefix = _text(env, "ALERT_REDIS_KEY_PREFIX", "alert:") or "alert:"
        return cls(
            database_url=connection_url(env, "DATABASE_URL", authority_ends="/", first_at=True),  # libpq
            redis_url=connection_url(env, "REDIS_URL", authority_ends="/?#", first_at=False),  # urllib
            queues=parse_queues(_text(env, "RQ_QUEUES", "alerts")),
            resource_scope=scope,
            job_timeout_seconds=job_timeout,
            stuck_after_seconds=stuck_after,
            max_attempts=_int(env, "ALERT_MAX_ATTEMPTS", 5, minimum=1),
            retry_delays=parse_delays(_text(env, "ALERT_RETRY_DELAYS", "5,30,120,600") or "5,30,120,600"),
            max_retry_delay_seconds=_float(env, "ALERT_MAX_RETRY_DELAY", 3600.0, minimum=1.0),
            max_defer_seconds=_float(env, "ALERT_MAX_DEFER_SECONDS", 3600.0, minimum=0.0),
            cooldown_seconds=_float(env, "ALERT_COOLDOWN_SECONDS", 30.0, minimum=1.0),
            channel_pause_seconds=_float(env, "ALERT_CHANNEL_PAUSE_SECONDS", 300.0, minimum=1.0),
            digest=_flag(env, "ALERT_DIGEST", True),
            digest_max_items=_int(env, "ALERT_DIGEST_MAX_ITEMS", 50, minimum=1),
            send_timeout_seconds=send_timeout,
            sweep_grace_seconds=_sweep_grace(env),
            sweep_interval_seconds=_float(env, "ALERT_SWEEP_INTERVAL_SECONDS", 30.0, minimum=0.1),
            auto_migrate=_flag(env, "ALERT_AUTO_MIGRATE", True),
            recipient_hash_secret=_text(env, "ALERT_RECIPIENT_HASH_SECRET"),
            redis_key_prefix=prefix,
            max_queue_depth=_int(env, "ALERT_MAX_QUEUE_DEPTH", 10_000, minimum=1),
            metrics_port=_metrics_port(env),
            worker_threads=_worker_threads(env),
            log_format=log_format,
            log_level=_log_level(env, "ALERT_LOG_LEVEL", "INFO"),
            rq_log_level=_log_level(env, "ALERT_RQ_LOG_LEVEL", "WARNING"),
            **cluster_from_env(env),
            rate_limits=RateLimits(
                per_channel_minute={
                    ChannelType.EMAIL: _int(env, "ALERT_RATE_EMAIL_PER_MIN", 100),
                    ChannelType.SLACK: _int(env, "ALERT_RATE_SLACK_PER_MIN", 50),
                    ChannelType.SMS: _int(env, "ALERT_RATE_SMS_PER_MIN", 10),
                },
                per_recipient_hour={
                    ChannelType.EMAIL: _int(env, "ALERT_RATE_EMAIL_PER_RECIPIENT_HOUR", 5),
                    ChannelType.SLACK: _int(env, "ALERT_RATE_SLACK_PER_RECIPIENT_HOUR", 10),
                    ChannelType.SMS: _int(env, "ALERT_RATE_SMS_PER_RECIPIENT_HOUR", 3),
                },
                global_per_minute=_int(env, "ALERT_RATE_GLOBAL_PER_MIN", 500),
            ),
            smtp=_smtp_from_env(env),
            slack=_slack_from_env(env),
            twilio=TwilioSettings(
                account_sid=_twilio_account(env),
                auth_token=_text(env, "TWILIO_AUTH_TOKEN"),
                from_number=_twilio_from(env),
                api_base_url=_twilio_base_url(env),
            ),
        )

    def missing_channel_settings(self) -> dict[ChannelType, tuple[str, ...]]:
        """Channels that are disabled on this worker, with the variables they lack."""
        gaps = {
            ChannelType.EMAIL: self.smtp.missing,
            ChannelType.SLACK: self.slack.missing,
            ChannelType.SMS: self.twilio.missing,
        }
        return {channel: names for channel, names in gaps.items() if names}


def _sweep_grace(env: Mapping[str, str]) -> int:
    grace = _int(env, "ALERT_SWEEP_GRACE_SECONDS", 60, minimum=-(2**63))
    if grace < 1:
        raise ConfigurationError(
            f"ALERT_SWEEP_GRACE_SECONDS must be >= 1, got {grace}: with no grace a swept row is due again at "
            "once and one sweep pass would re-enqueue it forever"
        )
    return grace


def _smtp_from_env(env: Mapping[str, str]) -> SmtpSettings:
    port = _int(env, "SMTP_PORT", 587, minimum=1)
    if port > 65535:
        raise ConfigurationError(f"SMTP_PORT must be a TCP port, got {port}")
    default_security = {465: "ssl", 587: "starttls"}.get(port, "none")
    security = _text(env, "SMTP_SECURITY", default_security).lower() or default_security
    if security not in ("starttls", "ssl", "none"):
        raise ConfigurationError(f"SMTP_SECURITY must be starttls, ssl or none, got {security!r}")
    user = _text(env, "SMTP_USER")
    return SmtpSettings(
        host=_text(env, "SMTP_HOST"),
        port=port,
        user=user,
        password=env.get("SMTP_PASSWORD", ""),
        from_address=_text(env, "ALERTS_FROM_EMAIL") or user,
        security=security,
        ca_file=_ca_file(env),
    )


def _ca_file(env: Mapping[str, str]) -> str:
    """``SMTP_CA_FILE``: a PEM bundle the SMTP connection trusts besides the default store; it must load."""
    path = _text(env, "SMTP_CA_FILE")
    if path:
        try:
            ssl.create_default_context().load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigurationError(f"SMTP_CA_FILE cannot be loaded as a PEM bundle: {type(exc).__name__}") from None
    return path


def _slack_from_env(env: Mapping[str, str]) -> SlackSettings:
    hosts = tuple(
        h.strip().lower() for h in _text(env, "SLACK_WEBHOOK_HOSTS", "hooks.slack.com").split(",") if h.strip()
    )
    return SlackSettings(
        default_webhook_url=_text(env, "SLACK_WEBHOOK_URL"),
        allowed_hosts=hosts or ("hooks.slack.com",),
    )


def _twilio_account(env: Mapping[str, str]) -> str:
    """Twilio's documented shape, ``AC`` and 32 hex digits, checked at start-up (docs/contract.md §7.7)."""
    sid = _text(env, "TWILIO_ACCOUNT_SID")
    if sid and not TWILIO_ACCOUNT_SID.fullmatch(sid):
        raise ConfigurationError("TWILIO_ACCOUNT_SID must be AC followed by 32 hexadecimal digits")
    return sid


def _twilio_from(env: Mapping[str, str]) -> str:
    number = _text(env, "TWILIO_FROM_NUMBER")
    if number and not is_e164(number) and not TWILIO_SERVICE_SID.fullmatch(number):
        raise ConfigurationError(
            "TWILIO_FROM_NUMBER must be an E.164 number (+ and 8-15 digits) or a Messaging Service SID "
            "(MG followed by 32 hexadecimal digits)"
        )
    return number


def _twilio_base_url(env: Mapping[str, str]) -> str:
    """``TWILIO_API_BASE_URL``: scheme and host (and port) only; every Twilio request goes there."""
    raw = _text(env, "TWILIO_API_BASE_URL", DEFAULT_TWILIO_API_BASE_URL) or DEFAULT_TWILIO_API_BASE_URL
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path.strip("/")
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise ConfigurationError("TWILIO_API_BASE_URL must be http(s)://host[:port] with no path")
    return raw.rstrip("/")


__all__ = [
    "RateLimit",
    "RateLimits",
    "Settings",
    "SlackSettings",
    "SmtpSettings",
    "TwilioSettings",
    "is_bare_address",
    "is_loopback_host",
    "parse_delays",
    "parse_queues",
]
