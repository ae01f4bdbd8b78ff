"""One ``requests`` error mapping for every HTTP channel: the same exception gives the same class."""

from __future__ import annotations

import http.client
import socket

import pytest
import requests
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.exceptions import ProxyError as Urllib3ProxyError

from alert_worker.channels.http import map_request_errors, outcome_unknown
from alert_worker.errors import OutcomeUnknownError, PermanentDeliveryError, TransientDeliveryError

SECRET_URL = "https://hooks.slack.com/services/T000/B000/secretsecretsecret"

MAPPING = [
    (requests.ConnectTimeout(SECRET_URL), TransientDeliveryError, "timeout: ConnectTimeout"),
    (requests.ReadTimeout(SECRET_URL), OutcomeUnknownError, "no answer after sending: ReadTimeout"),
    (requests.ConnectionError(SECRET_URL), TransientDeliveryError, "connection error: ConnectionError"),
    (requests.ConnectionError(ProtocolError("Connection aborted.", SECRET_URL)), OutcomeUnknownError,
     "connection dropped after sending: ConnectionError"),
    (requests.exceptions.ChunkedEncodingError(SECRET_URL), OutcomeUnknownError,
     "answer unreadable after sending: ChunkedEncodingError"),
    (requests.exceptions.ContentDecodingError(DecodeError("not gzip", SECRET_URL)), OutcomeUnknownError,
     "answer unreadable after sending: ContentDecodingError"),
    (requests.exceptions.TooManyRedirects(SECRET_URL), TransientDeliveryError, "request error: TooManyRedirects"),
    (requests.exceptions.InvalidURL(SECRET_URL), PermanentDeliveryError, "invalid request: InvalidURL"),
    (requests.exceptions.InvalidSchema(SECRET_URL), PermanentDeliveryError, "invalid request: InvalidSchema"),
    (requests.exceptions.MissingSchema(SECRET_URL), PermanentDeliveryError, "invalid request: MissingSchema"),
]
MAPPING_IDS = ["connect-timeout", "read-timeout-outcome-unknown", "connection-error", "dropped-after-sending",
               "chunked-body-broke-after-the-status-line", "body-cannot-be-decoded-after-the-status-line",
               "other-request-exception", "invalid-url", "invalid-schema",
               "missing-schema"]


@pytest.mark.parametrize("provider", ["slack", "twilio"], ids=["slack", "twilio"])
@pytest.mark.parametrize(("exc", "error", "reason"), MAPPING, ids=MAPPING_IDS)
def test_a_requests_exception_maps_the_same_way_for_every_provider(
    provider: str, exc: Exception, error: type[Exception], reason: str
) -> None:
    """The class decides; the reason names the provider and the exception class, never the URL."""
    with pytest.raises(error) as caught, map_request_errors(provider):
        raise exc
    assert type(caught.value) is error
    prefix = "outcome_unknown: " if error is OutcomeUnknownError else ""
    assert str(caught.value) == f"{prefix}{provider} {reason}"
    assert "secret" not in str(caught.value) and caught.value.__cause__ is exc


def test_anything_that_is_not_a_requests_exception_passes_through() -> None:
    """Provider errors (``TwilioException``) and our own are classified elsewhere."""
    with pytest.raises(KeyError), map_request_errors("twilio"):
        raise KeyError("x")


# -- §7.7: a connection dropped after the request was written is an unknown outcome, whatever wraps it ------
def _retries_exhausted(reason: Exception) -> MaxRetryError:
    return MaxRetryError(None, "/2010-04-01/Accounts/AC1/Messages.json", reason)  # type: ignore[arg-type]


def _through_proxy(original: Exception) -> requests.exceptions.ProxyError:
    """What requests raises behind a proxy: urllib3 wraps the socket-level error in its ``ProxyError``."""
    return requests.exceptions.ProxyError(_retries_exhausted(Urllib3ProxyError("Unable to connect to proxy", original)))


DROPPED = http.client.RemoteDisconnected("Remote end closed connection without response")
CAUSE_CHAIN = [
    (_through_proxy(DROPPED), True),
    (_through_proxy(http.client.IncompleteRead(b"{")), True),
    (_through_proxy(ConnectionResetError(104, "Connection reset by peer")), True),
    (_through_proxy(OSError("Tunnel connection failed: 403 Forbidden")), False),
    (_through_proxy(NewConnectionError(None, "Failed to establish a new connection: [Errno 111]")), False),  # type: ignore[arg-type]
    (_through_proxy(ConnectTimeoutError(None, "timed out")), False),
    (_through_proxy(socket.gaierror(-2, "Name or service not known")), False),
    (requests.ConnectionError(_retries_exhausted(ProtocolError("Connection aborted.", DROPPED))), True),
    (requests.ConnectionError(_retries_exhausted(NewConnectionError(None, "refused"))), False),  # type: ignore[arg-type]
    (requests.ConnectionError(_retries_exhausted(ConnectionRefusedError(111, "refused"))), False),
    (http.client.RemoteDisconnected("Remote end closed connection without response"), True),
    (requests.ReadTimeout(ReadTimeoutError(None, "/", "read timed out")), True),  # type: ignore[arg-type]
    (requests.ConnectTimeout(_retries_exhausted(ConnectTimeoutError(None, "timed out"))), False),
    (requests.ConnectionError("Max retries exceeded (NewConnectionError)"), False),
    (requests.exceptions.ContentDecodingError(DecodeError("Received response with content-encoding: gzip")), True),
    (requests.exceptions.ChunkedEncodingError(ProtocolError("Response ended prematurely")), True),
]
CAUSE_CHAIN_IDS = [
    "proxy-remote-disconnected-after-post", "proxy-incomplete-read", "proxy-reset-after-post",
    "proxy-refused-connect-tunnel", "proxy-unreachable", "proxy-connect-timeout", "proxy-dns-failure",
    "max-retry-protocol-error", "max-retry-new-connection", "max-retry-refused", "bare-remote-disconnected",
    "read-timeout", "connect-timeout", "text-only-connection-error",
    "requests-content-decoding-error", "chunked-body-ended-early",
]


@pytest.mark.parametrize(("exc", "unknown"), CAUSE_CHAIN, ids=CAUSE_CHAIN_IDS)
def test_the_whole_cause_chain_decides_whether_the_request_may_have_reached_the_provider(
    exc: Exception, unknown: bool
) -> None:
    """Dropped after writing: ``outcome_unknown:``; refused, unreachable, DNS, or a CONNECT the proxy
    refused: definitely not sent, a plain transient failure."""
    assert outcome_unknown(exc) is unknown
    with pytest.raises(TransientDeliveryError) as caught, map_request_errors("twilio"):
        raise exc
    assert isinstance(caught.value, OutcomeUnknownError) is unknown
    assert caught.value.__cause__ is exc
