"""One ``requests`` error mapping for every HTTP channel: the same exception gives the same class."""

from __future__ import annotations

import pytest
import requests
from urllib3.exceptions import ProtocolError

from alert_worker.channels.http import map_request_errors
from alert_worker.errors import OutcomeUnknownError, PermanentDeliveryError, TransientDeliveryError

SECRET_URL = "https://hooks.slack.com/services/T000/B000/secretsecretsecret"

MAPPING = [
    (requests.ConnectTimeout(SECRET_URL), TransientDeliveryError, "timeout: ConnectTimeout"),
    (requests.ReadTimeout(SECRET_URL), OutcomeUnknownError, "no answer after sending: ReadTimeout"),
    (requests.ConnectionError(SECRET_URL), TransientDeliveryError, "connection error: ConnectionError"),
    (
        requests.ConnectionError(ProtocolError("Connection aborted.", SECRET_URL)),
        OutcomeUnknownError,
        "connection dropped after sending: ConnectionError",
    ),
    (
        requests.exceptions.ChunkedEncodingError(SECRET_URL),
        TransientDeliveryError,
        "request error: ChunkedEncodingError",
    ),
    (requests.exceptions.InvalidURL(SECRET_URL), PermanentDeliveryError, "invalid request: InvalidURL"),
    (requests.exceptions.InvalidSchema(SECRET_URL), PermanentDeliveryError, "invalid request: InvalidSchema"),
    (requests.exceptions.MissingSchema(SECRET_URL), PermanentDeliveryError, "invalid request: MissingSchema"),
]
MAPPING_IDS = [
    "connect-timeout",
    "read-timeout-outcome-unknown",
    "connection-error",
    "dropped-after-sending",
    "chunked",
    "invalid-url",
    "invalid-schema",
    "missing-schema",
]


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
