"""The one translation of ``requests`` exceptions into our errors, shared by Slack and Twilio.

Modelled on httpx's ``map_exceptions``: a context manager around the call, each foreign exception mapped
once with ``raise ... from``. Reasons name the provider and the exception class only: ``str()`` of a
``requests`` exception quotes the URL, and for Slack the URL's path is the webhook secret.

    Timeout (connect or read)                  transient
    ConnectionError                            transient
    InvalidURL, InvalidSchema, MissingSchema   permanent (the same request can never be made)
    any other RequestException                 transient
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import requests

from alert_worker.errors import PermanentDeliveryError, TransientDeliveryError

_NEVER_VALID = (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema)


@contextmanager
def map_request_errors(provider: str) -> Iterator[None]:
    """Run an HTTP call; a ``requests`` exception leaves as ``Transient``/``PermanentDeliveryError``."""
    try:
        yield
    except requests.Timeout as exc:  # before ConnectionError: ConnectTimeout is both
        raise TransientDeliveryError(f"{provider} timeout: {type(exc).__name__}") from exc
    except requests.ConnectionError as exc:
        raise TransientDeliveryError(f"{provider} connection error: {type(exc).__name__}") from exc
    except _NEVER_VALID as exc:
        raise PermanentDeliveryError(f"{provider} invalid request: {type(exc).__name__}") from exc
    except requests.RequestException as exc:
        raise TransientDeliveryError(f"{provider} request error: {type(exc).__name__}") from exc
