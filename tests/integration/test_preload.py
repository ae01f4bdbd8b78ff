"""The per-process preload: a forked work-horse inherits the secret and needs no module import."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from alert_worker.preload import preload_process
from alert_worker.settings import Settings
from alert_worker.store import DeliveryStore
from tests.support.processes import rq_burst

pytestmark = pytest.mark.integration


class _NoDatabase:
    """A pool on the same DSN that fails if anything asks it for a connection."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo

    @contextmanager
    def connection(self) -> Iterator[Any]:
        raise AssertionError("the secret was read from Postgres again")
        yield


def test_preload_reads_the_generated_hash_secret_once_for_the_whole_process(worker_env: dict[str, str]) -> None:
    """With no configured secret, later stores of this process get it without a database round trip."""
    env = {k: v for k, v in worker_env.items() if k != "ALERT_RECIPIENT_HASH_SECRET"}
    settings = Settings.from_env(env)
    assert preload_process(settings)["hash_secret"] is True
    store = DeliveryStore(pool=_NoDatabase(settings.database_url))  # type: ignore[arg-type]
    assert len(store.recipient_hash_secret("")) == 64


def test_the_tls_context_is_built_only_when_smtp_uses_tls(worker_env: dict[str, str]) -> None:
    """SMTP_SECURITY=none builds no TLS context (the CA bundle costs ~20 ms); starttls builds it once."""
    assert preload_process(Settings.from_env(worker_env))["tls_context"] is False
    assert preload_process(Settings.from_env({**worker_env, "SMTP_SECURITY": "starttls"}))["tls_context"] is True


def test_an_smtp_send_without_tls_never_builds_a_tls_context(
    worker_env: dict[str, str], smtp_sink: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SMTP_SECURITY=none: no CA bundle is loaded (it cost ~50 ms of a ~70 ms send in a forked horse)."""
    import alert_worker.channels.email as email_channel
    from alert_worker.channels import build_channel
    from alert_worker.models import ChannelType, Message

    def refused(*_: object) -> None:
        raise AssertionError("a TLS context was built for a plain SMTP connection")

    monkeypatch.setattr(email_channel, "default_tls_context", refused)
    channel = build_channel(ChannelType.EMAIL, Settings.from_env(worker_env))
    message = Message(
        delivery_id="tls-0", channel=ChannelType.EMAIL, recipient="ops@example.com", subject="s", body="b"
    )
    channel.send(channel.prepare(message))
    assert len(smtp_sink.messages_to("ops@example.com")) == 1


@pytest.mark.e2e
def test_rq_worker_with_the_rq_settings_module_delivers(
    worker_env: dict[str, str], smtp_sink: Any, database_url: str
) -> None:
    """``rq worker -c alert_worker.rq_settings alerts --with-scheduler --burst`` preloads and delivers."""
    from alert_worker.producer import send_alert

    send_alert("email", "ops@example.com", "s", "b", delivery_id="pre-1", settings=Settings.from_env(worker_env))
    output = rq_burst(["alerts"], worker_env, extra=["-c", "alert_worker.rq_settings"])
    assert len(smtp_sink.messages_to("ops@example.com")) == 1
    assert "ops@example.com" not in output
