"""Build what every job of a process needs once, before a forking worker forks its work-horses.

A forked horse inherits the parent's memory, so anything built here is free in every horse: the job
module and channel imports, the recipient-hash secret (read from Postgres once, cached per process by
``DeliveryStore``), and the TLS context (only when SMTP uses TLS: loading the CA bundle costs ~20 ms).
No connection, pool or thread is left open across the fork: the secret is read on a short-lived,
thread-free pool that is closed here.
Plain ``rq worker`` without ``-c alert_worker.rq_settings`` keeps paying these per job.
"""

from __future__ import annotations

import email.policy  # noqa: F401 - EmailMessage() imports it on first use: once here, not in every horse

import structlog

import alert_worker.channels.email as email_channel
import alert_worker.job  # noqa: F401 - the job module: a horse must not re-import it
from alert_worker.resources import closing_resources, open_job_resources
from alert_worker.settings import Settings
from alert_worker.store import DeliveryStore

log = structlog.get_logger("alert_worker.preload")


def preload_process(settings: Settings) -> dict[str, bool]:
    """Warm the per-process caches; each step that fails is logged and skipped (jobs then pay for it)."""
    done = {"hash_secret": False, "tls_context": False}
    if settings.database_url:
        try:
            with closing_resources(open_job_resources(settings)) as resources:
                DeliveryStore(pool=resources.pool).recipient_hash_secret(settings.recipient_hash_secret)
            done["hash_secret"] = True
        except Exception as exc:  # noqa: BLE001 - an optimisation; the job reads the secret itself
            log.warning("preload_skipped", step="hash_secret", error=type(exc).__name__)
    if settings.smtp.host:
        email_channel.preload(settings.smtp)  # the TLS context, only when TLS is used
        done["tls_context"] = settings.smtp.security in email_channel.TLS_SECURITIES
    return done
