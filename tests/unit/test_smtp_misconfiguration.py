"""SMTP answers that refuse the channel's own settings, against real loopback servers (contract §7.7).

Each is ``ChannelMisconfiguredError`` (the channel is paused, never a poisoned delivery): a wrong password, a
TLS mode the server does not speak, a certificate nobody told us to trust. ``SMTP_CA_FILE`` adds a CA to the
default store; ``check_login`` logs in and sends nothing. Addresses: a non-ASCII local part goes out with
SMTPUTF8, an internationalized domain in its ASCII form.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from alert_worker.channels.email import EmailChannel, default_tls_context, parse_address
from alert_worker.channels.smtp_errors import session_misconfiguration
from alert_worker.errors import (
    ChannelMisconfiguredError,
    InvalidInputError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from alert_worker.models import ChannelType, Message
from alert_worker.settings import SmtpSettings
from tests.support.processes import free_port
from tests.support.smtp import SmtpSink, running_smtp_sink

PASSWORD = "smtp-canary-password-123"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl), which no default trust store holds."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def _message(recipient: str = "oncall@example.com") -> Message:
    return Message(
        delivery_id="m-1", channel=ChannelType.EMAIL, recipient=recipient, subject="Disk full", body="db-1", attempt=0
    )


def _channel(
    port: int, *, security: str = "none", user: str = "", password: str = "", ca_file: str = "", timeout: float = 5
) -> EmailChannel:
    settings = SmtpSettings("127.0.0.1", port, user, password, "alerts@example.org", security, ca_file=ca_file)
    return EmailChannel(settings=settings, timeout_seconds=timeout)


# -- authentication ------------------------------------------------------------------------------------
def test_a_wrong_password_is_a_misconfiguration_after_one_login_of_two_auth_commands() -> None:
    """535: the channel's settings are refused; smtplib tried PLAIN then LOGIN, and nothing more."""
    with running_smtp_sink(login=("alerts", "the-right-one")) as sink:
        with pytest.raises(ChannelMisconfiguredError) as caught:
            _channel(sink.port, user="alerts", password=PASSWORD).send(_message())
        assert sink.auth_commands == 2 and sink.accepted == []
    assert caught.value.reason == "smtp_auth_failed 535: check SMTP_USER and SMTP_PASSWORD"
    assert caught.value.definite, "nothing was sent: the rate-limit slots go back"


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials"), "smtp_auth_failed 535"),
        (smtplib.SMTPAuthenticationError(534, b"5.7.9 please log in with your web browser"), "smtp_auth_failed 534"),
        (smtplib.SMTPAuthenticationError(530, b"5.7.0 authentication required"), "smtp_auth_failed 530"),
        (smtplib.SMTPSenderRefused(530, b"5.7.0 Authentication required", "a@example.org"), "smtp_auth_required 530"),
        (smtplib.SMTPSenderRefused(530, b"5.7.0 Must issue a STARTTLS command first", "a@x.org"), "smtp_tls_required"),
        (smtplib.SMTPNotSupportedError("STARTTLS extension not supported by server."), "smtp_starttls_unsupported"),
        (smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported by server."), "smtp_auth_unsupported"),
        (smtplib.SMTPException("No suitable authentication method found."), "smtp_auth_unsupported"),
    ],
    ids=["535", "534", "530-to-auth", "530-to-mail-from", "530-starttls-first", "no-starttls", "no-auth", "no-mech"],
)
def test_answers_refusing_the_settings_are_misconfigurations(exc: Exception, reason: str) -> None:
    found = session_misconfiguration(exc)
    assert found is not None and found.reason.startswith(reason)


@pytest.mark.parametrize(
    "exc",
    [
        smtplib.SMTPAuthenticationError(454, b"4.7.0 Temporary authentication failure"),
        smtplib.SMTPSenderRefused(550, b"5.1.0 sender rejected", "a@example.org"),
        smtplib.SMTPRecipientsRefused({"b@example.org": (550, b"5.1.1 no such user")}),
        smtplib.SMTPServerDisconnected("Connection unexpectedly closed"),
    ],
    ids=["454-temporary", "sender-refused", "recipient-refused", "disconnect"],
)
def test_other_answers_are_not_misconfigurations(exc: Exception) -> None:
    assert session_misconfiguration(exc) is None


def test_a_server_without_starttls_refuses_the_starttls_setting() -> None:
    with running_smtp_sink() as sink, pytest.raises(ChannelMisconfiguredError, match=r"^smtp_starttls_unsupported"):
        _channel(sink.port, security="starttls").send(_message())


# -- TLS mode against the server --------------------------------------------------------------------------
def test_smtp_security_ssl_against_a_plain_server_is_a_tls_mismatch_found_at_once() -> None:
    """OpenSSL reads the plain ``220`` greeting as a TLS record (WRONG_VERSION_NUMBER)."""
    with running_smtp_sink() as sink, pytest.raises(ChannelMisconfiguredError) as caught:
        _channel(sink.port, security="ssl").send(_message())
    assert caught.value.reason.startswith("smtp_tls_mismatch: SMTP_SECURITY=ssl")
    assert sink.accepted == []


@pytest.mark.parametrize("security", ["none", "starttls"])
def test_a_plain_connection_to_an_smtps_port_is_a_tls_mismatch(server_tls: ssl.SSLContext, security: str) -> None:
    """No greeting comes within the send timeout; the port answers a TLS handshake: not a transient error."""
    with running_smtp_sink(implicit_tls_context=server_tls) as sink, pytest.raises(ChannelMisconfiguredError) as caught:
        _channel(sink.port, security=security, timeout=1).send(_message())
    assert (
        caught.value.reason
        == f"smtp_tls_mismatch: SMTP_SECURITY={security} but the server speaks TLS at connect (use ssl)"
    )


def test_a_port_that_never_answers_stays_a_transient_error_not_a_pause() -> None:
    """No greeting and no TLS either (a hung server): the probe finds no TLS, so nothing is paused."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts into its backlog, never speaks
        channel = _channel(silent.getsockname()[1], timeout=1)
        with pytest.raises(TransientDeliveryError) as caught:
            channel.send(_message())
    assert not isinstance(caught.value, ChannelMisconfiguredError)


# -- trust ------------------------------------------------------------------------------------------------
def test_an_untrusted_certificate_is_a_misconfiguration(server_tls: ssl.SSLContext) -> None:
    with running_smtp_sink(starttls_context=server_tls) as sink:
        with pytest.raises(ChannelMisconfiguredError, match=r"^smtp_tls_verify_failed"):
            _channel(sink.port, security="starttls").send(_message())
        assert sink.accepted == []


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_smtp_ca_file_makes_a_private_ca_trusted_for_the_smtp_connection(
    server_tls: ssl.SSLContext, certificate: tuple[Path, Path], security: str
) -> None:
    """The PEM bundle is added to the default store (no process-wide SSL_CERT_FILE needed)."""
    tls = {"starttls_context": server_tls} if security == "starttls" else {"implicit_tls_context": server_tls}
    with running_smtp_sink(login=("alerts", PASSWORD), **tls) as sink:
        channel = _channel(sink.port, security=security, user="alerts", password=PASSWORD, ca_file=str(certificate[0]))
        channel.send(_message())
        assert len(sink.accepted) == 1


def test_smtp_ca_file_is_added_to_the_default_trust_store_not_instead_of_it(certificate: tuple[Path, Path]) -> None:
    default_tls_context.cache_clear()
    plain = ssl.create_default_context().cert_store_stats()["x509_ca"]
    extended = default_tls_context(str(certificate[0])).cert_store_stats()["x509_ca"]
    assert extended == plain + 1


# -- check ------------------------------------------------------------------------------------------------
def test_check_login_logs_in_and_sends_nothing() -> None:
    with running_smtp_sink(login=("alerts", PASSWORD)) as sink:
        _channel(sink.port, user="alerts", password=PASSWORD).check_login()
        assert sink.auth_commands == 1 and sink.accepted == [] and sink.data_calls == 0


def test_check_login_with_a_wrong_password_is_refused() -> None:
    with running_smtp_sink(login=("alerts", "the-right-one")) as sink, pytest.raises(ChannelMisconfiguredError):
        _channel(sink.port, user="alerts", password=PASSWORD).check_login()


# -- addresses (issue 20 point 17) ------------------------------------------------------------------------
@contextmanager
def _sink_offering_smtputf8(offered: bool) -> Iterator[SmtpSink]:
    sink = SmtpSink(port=free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port, enable_SMTPUTF8=offered)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


def test_a_non_ascii_local_part_is_accepted_and_sent_with_smtputf8() -> None:
    """The envelope carries the UTF-8 address, announced with SMTPUTF8."""
    with _sink_offering_smtputf8(True) as sink:
        channel = _channel(sink.port)
        channel.send(channel.prepare(_message("jöhn@example.com")))
        [accepted] = sink.accepted
    assert accepted.rcpt_tos == ["jöhn@example.com"]


def test_a_non_ascii_local_part_to_a_server_without_smtputf8_is_a_clear_permanent_error() -> None:
    with _sink_offering_smtputf8(False) as sink:
        channel = _channel(sink.port)
        with pytest.raises(PermanentDeliveryError) as caught:
            channel.send(channel.prepare(_message("jöhn@example.com")))
        assert sink.accepted == []
    assert caught.value.reason.startswith("smtp_smtputf8_unsupported")
    assert not isinstance(caught.value, ChannelMisconfiguredError), "a property of this address, not the channel"


def test_an_internationalized_domain_is_sent_in_its_ascii_form_without_smtputf8(smtp_sink: SmtpSink) -> None:
    """``bücher.de`` becomes ``xn--bcher-kva.de`` in the envelope and the To header: any server takes it."""
    channel = _channel(smtp_sink.port)
    channel.send(channel.prepare(_message("jo@bücher.de")))
    [accepted] = smtp_sink.accepted
    assert accepted.rcpt_tos == ["jo@xn--bcher-kva.de"]
    assert accepted.message["To"] == "jo@xn--bcher-kva.de"


@pytest.mark.parametrize(
    ("address", "expected"),
    [("jöhn@example.com", "jöhn@example.com"), ("jo@bücher.de", "jo@xn--bcher-kva.de"), ("a@b.org", "a@b.org")],
    ids=["utf8-local-part", "idn-domain", "ascii"],
)
def test_parse_address_keeps_a_utf8_local_part_and_gives_the_ascii_domain(address: str, expected: str) -> None:
    assert parse_address(address).addr_spec == expected


@pytest.mark.parametrize(
    "address",
    ["jö hn@example.com", "jö..hn@example.com", "jöhn@", "jo@bü..cher.de", "\u200bjo\x00@example.com"],
    ids=["space", "double-dot", "no-domain", "empty-label", "control"],
)
def test_parse_address_still_refuses_malformed_addresses(address: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_address(address)
