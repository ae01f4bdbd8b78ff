"""The one translation of ``requests`` exceptions into our errors, shared by Slack and Twilio.

Modelled on httpx's ``map_exceptions``: a context manager around the call, each foreign exception mapped
once with ``raise ... from``. Reasons name the provider and the exception class only: ``str()`` of a
``requests`` exception quotes the URL, and for Slack the URL's path is the webhook secret.

    ReadTimeout, or a connection dropped        outcome unknown (transient: the provider may have the
      after the request was written             request; SMS looks it up before resending)
    ConnectTimeout, other ConnectionError      transient (nothing was sent; ``definite`` when the
                                               connection itself failed: refused, DNS, connect timeout)
    InvalidURL, InvalidSchema, MissingSchema   permanent (the same request can never be made)
    any other RequestException                 transient
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import requests
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, ProtocolError, ProxyError

from alert_worker.errors import OutcomeUnknownError, PermanentDeliveryError, TransientDeliveryError

_NEVER_VALID = (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema)


@contextmanager
def map_request_errors(provider: str) -> Iterator[None]:
    """Run an HTTP call; a ``requests`` exception leaves as ``Transient``/``PermanentDeliveryError``."""
    try:
        yield
    except requests.Timeout as exc:  # before ConnectionError: ConnectTimeout is both
        if outcome_unknown(exc):
            raise OutcomeUnknownError(f"{provider} no answer after sending: {type(exc).__name__}") from exc
        raise TransientDeliveryError(f"{provider} timeout: {type(exc).__name__}", definite=never_sent(exc)) from exc
    except requests.ConnectionError as exc:
        if outcome_unknown(exc):
            raise OutcomeUnknownError(f"{provider} connection dropped after sending: {type(exc).__name__}") from exc
        reason = f"{provider} connection error: {type(exc).__name__}"
        raise TransientDeliveryError(reason, definite=never_sent(exc)) from exc
    except _NEVER_VALID as exc:
        raise PermanentDeliveryError(f"{provider} invalid request: {type(exc).__name__}", definite=True) from exc
    except requests.RequestException as exc:
        raise TransientDeliveryError(f"{provider} request error: {type(exc).__name__}") from exc


def outcome_unknown(exc: requests.RequestException) -> bool:
    """True when the provider may have received the request although no answer came.

    A read timeout happens only after the request was written; a ``ProtocolError`` (connection aborted,
    remote end closed without a response) once the connection was open and the request on its way. A
    refused connection, a DNS failure or a connect timeout happened before anything was sent.
    """
    if isinstance(exc, requests.ConnectTimeout):
        return False
    if isinstance(exc, requests.ReadTimeout):
        return True
    return isinstance(exc, requests.ConnectionError) and any(isinstance(arg, ProtocolError) for arg in exc.args)


def never_sent(exc: requests.RequestException) -> bool:
    """True only when the connection to the provider itself failed, so no byte of the request left.

    A connect timeout, or a ``ConnectionError`` whose cause is urllib3's ``ConnectTimeoutError`` or its
    subclasses ``NewConnectionError`` (refused, unreachable) and ``NameResolutionError`` (DNS). Anything
    through a proxy, or any other cause, is not known to be unsent.
    """
    if isinstance(exc, requests.exceptions.ProxyError):
        return False
    if isinstance(exc, requests.ConnectTimeout):
        return True
    for arg in exc.args:
        reason = arg.reason if isinstance(arg, MaxRetryError) else arg
        if isinstance(reason, ProxyError):
            return False
        if isinstance(reason, ConnectTimeoutError):
            return True
    return False
