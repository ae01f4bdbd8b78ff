"""Probes: what the worker checks before it starts and what ``alert-worker check`` reports.

Start-up and ``check`` share every probe here, so they cannot disagree (e.g. on whether e-mail is
configured: one answer, ``Settings.missing_channel_settings``). A failed probe is a ``StartupError``
whose message is sanitized: host, port and database, never a password.
"""

from __future__ import annotations

from typing import Any

import psycopg
import redis
import structlog

from alert_worker.connect import postgres_kwargs
from alert_worker.errors import InvalidInputError
from alert_worker.models import ChannelType
from alert_worker.redaction import safe_error, url_password, url_target
from alert_worker.resources import open_redis
from alert_worker.settings import Settings

log = structlog.get_logger("alert_worker.health")

REDIS_SCHEMES = ("redis", "rediss", "unix")
# Plain `rq worker` logs each job's description (a hand-enqueued job's recipient and body) unless told
# not to: every `rq worker` command line this package prints is this one.
RQ_WORKER_COMMAND = "rq worker --with-scheduler --disable-job-desc-logging"


class StartupError(Exception):
    """The worker (or a command) cannot start; ``event`` and ``fields`` make its one log line."""

    def __init__(self, event: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.event = event
        self.fields = {"error": message, **fields}


def require_connection_settings(settings: Settings) -> None:
    """Both URLs set, and REDIS_URL a URL redis-py can open (``foo://bar`` is refused here, by name)."""
    missing = [n for n, v in (("DATABASE_URL", settings.database_url), ("REDIS_URL", settings.redis_url)) if not v]
    if missing:
        raise StartupError(
            "configuration_missing", f"required environment variable not set: {', '.join(missing)}", variables=missing
        )
    scheme = settings.redis_url.partition("://")[0].lower() if "://" in settings.redis_url else ""
    if scheme not in REDIS_SCHEMES:
        raise StartupError(
            "configuration_invalid",
            f"REDIS_URL must start with redis://, rediss:// or unix://, got scheme {scheme or '(none)'!r}",
            variables=["REDIS_URL"],
        )


def check_database(settings: Settings) -> None:
    """``SELECT 1`` on a fresh connection."""
    try:
        with psycopg.connect(settings.database_url, **postgres_kwargs(settings)) as conn:
            conn.execute("SELECT 1")
    except (psycopg.Error, OSError) as exc:
        raise StartupError(
            "database_unreachable",
            safe_error(exc, url_password(settings.database_url)),
            target=url_target(settings.database_url),
        ) from exc


def check_redis(settings: Settings) -> None:
    """``PING`` on a fresh client."""
    try:
        client = open_redis(settings)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise StartupError(
            "redis_unreachable",
            safe_error(exc, url_password(settings.redis_url)),
            target=url_target(settings.redis_url),
        ) from exc


def channel_states(settings: Settings) -> dict[str, str]:
    """Per channel: ``configured``, or ``disabled (...)``/a caveat, as both start-up and ``check`` say it."""
    states: dict[str, str] = {}
    missing = settings.missing_channel_settings()
    for channel in ChannelType:
        if channel in missing:
            states[channel.value] = f"disabled (missing {', '.join(missing[channel])})"
        elif channel is ChannelType.SLACK and not settings.slack.default_webhook_url:
            states[channel.value] = "configured (no SLACK_WEBHOOK_URL: recipients must name their webhook)"
        else:
            states[channel.value] = "configured"
    return states


def warn_disabled_channels(settings: Settings) -> None:
    """Start-up: one warning per channel that will poison its deliveries (``channel_not_configured``)."""
    from alert_worker.channels.slack import check_webhook_url

    for channel, missing in settings.missing_channel_settings().items():
        log.warning(
            "channel_disabled",
            channel=channel.value,
            missing=list(missing),
            detail=f"{channel.value} deliveries will be poisoned (channel_not_configured)",
        )
    if settings.slack.default_webhook_url:
        try:
            check_webhook_url(settings.slack.default_webhook_url, settings.slack.allowed_hosts)
        except InvalidInputError as exc:
            log.warning(
                "channel_misconfigured",
                channel="slack",
                variable="SLACK_WEBHOOK_URL",
                reason=exc.reason,
                detail="deliveries to the default webhook will be poisoned (channel_not_configured)",
            )


def run_check(settings: Settings) -> dict[str, Any]:
    """Every check's verdict; ``ok`` is true when the database and Redis answer."""
    result: dict[str, Any] = {"warnings": []}
    warnings: list[str] = result["warnings"]
    try:
        require_connection_settings(settings)
        usable = True
    except StartupError as exc:
        warnings.append(str(exc))
        usable = False
    result["database"] = _probe(check_database, settings, settings.database_url, "DATABASE_URL")
    if usable or not settings.redis_url:
        result["redis"] = _probe(check_redis, settings, settings.redis_url, "REDIS_URL")
    else:
        result["redis"] = "unusable (see warnings)"
    if result["database"] == "ok":
        _database_details(settings, warnings)
    if result["redis"] == "ok":
        client = open_redis(settings)
        try:
            _redis_details(settings, client, result, warnings)
        finally:
            client.close()
    result["channels"] = channel_states(settings)
    result["logins"] = check_provider_logins(settings, warnings)
    refused = any(verdict.startswith("refused") for verdict in result["logins"].values())
    answered = result["database"] == "ok" and result["redis"] == "ok"
    result["ok"] = answered and not refused and not result.get("scheduler_missing")
    return result


def check_provider_logins(settings: Settings, warnings: list[str]) -> dict[str, str]:
    """Log in where a channel is configured, sending nothing (docs/contract.md §7.7).

    E-mail: connect, EHLO, STARTTLS or SSL as configured, AUTH when SMTP_USER is set, QUIT. SMS: one
    ``GET /2010-04-01/Accounts/<SID>.json``. ``refused: ...`` when the provider refuses the settings (check
    fails), ``unreachable: ...`` when it cannot be asked (a warning: the settings may still be right).
    """
    from alert_worker.errors import ChannelMisconfiguredError, DeliveryError

    missing = settings.missing_channel_settings()
    verdicts: dict[str, str] = {}
    for channel in (ChannelType.EMAIL, ChannelType.SMS):
        if channel in missing:
            continue
        try:
            _login(channel, settings)
        except ChannelMisconfiguredError as exc:
            verdicts[channel.value] = f"refused: {exc.reason}"
        except DeliveryError as exc:
            verdicts[channel.value] = f"unreachable: {exc.reason}"
            warnings.append(f"{channel.value}: the provider could not be asked ({exc.reason})")
        else:
            verdicts[channel.value] = "ok"
    return verdicts


def _login(channel: ChannelType, settings: Settings) -> None:
    if channel is ChannelType.EMAIL:
        from alert_worker.channels.email import EmailChannel

        EmailChannel(settings=settings.smtp, timeout_seconds=settings.send_timeout_seconds).check_login()
        return
    from alert_worker.channels.sms import SmsChannel

    sms = SmsChannel(settings=settings.twilio, timeout_seconds=settings.send_timeout_seconds)
    try:
        sms.check_account()
    finally:
        sms.close()


def _probe(probe: Any, settings: Settings, url: str, variable: str) -> str:
    if not url:
        return f"not configured ({variable} is not set)"
    try:
        probe(settings)
    except StartupError as exc:
        return f"unreachable: {exc}"
    return "ok"


def _database_details(settings: Settings, warnings: list[str]) -> None:
    with psycopg.connect(settings.database_url, **postgres_kwargs(settings)) as conn:
        present = conn.execute("SELECT to_regclass('alert_deliveries') IS NOT NULL").fetchone()
    if not (present and present[0]):
        warnings.append("schema missing: run `alert-worker migrate` (the worker migrates at start-up)")


def _redis_details(settings: Settings, client: redis.Redis, result: dict[str, Any], warnings: list[str]) -> None:
    from alert_worker.liveness import SCHEDULER_MISSING_LIMIT_SECONDS, observe_scheduler_locks

    try:
        policy = str(client.config_get("maxmemory-policy").get("maxmemory-policy", "unknown"))
    except redis.RedisError:
        policy = "unknown (CONFIG GET not allowed)"
    result["redis_maxmemory_policy"] = policy
    if policy != "noeviction":
        warnings.append(
            f"Redis maxmemory-policy is {policy}, not noeviction: Redis may evict queued jobs and rate-limit "
            "keys (the sweep recovers lost jobs, but late)"
        )
    from alert_worker.cooldown import paused_channels

    for channel, reason in sorted(paused_channels(client, settings.redis_key_prefix).items()):
        warnings.append(f"channel {channel} is paused: {reason} (docs/operations.md, 'A channel is paused')")
    missing = observe_scheduler_locks(client, settings.redis_key_prefix, list(settings.queues))
    result["scheduler"] = {queue: seconds is None for queue, seconds in missing.items()}
    # docs/contract.md §7.5: a failure once no scheduler has held a queue's lock for 60 s (timed from the
    # first sighting of its absence by a worker or by check), so a scheduler restarting is not one.
    result["scheduler_missing"] = {
        q: round(s) for q, s in missing.items() if s is not None and s >= SCHEDULER_MISSING_LIMIT_SECONDS
    }
    for queue, seconds in missing.items():
        if seconds is not None:
            warnings.append(
                f"no RQ scheduler has held the lock for queue {queue!r} for {round(seconds)} s: retries and "
                f"deferrals will not run (start a worker with the scheduler: `alert-worker` or `{RQ_WORKER_COMMAND}`)"
            )
