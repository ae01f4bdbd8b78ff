"""Which ``requests`` failures leave the outcome unknown: the request may have reached the provider.

A read timeout happens only after the request was written; a ``ProtocolError`` (connection aborted,
remote end closed without a response) happens once the connection was open and the request on its way.
A refused connection, a DNS failure or a connect timeout happened before anything was sent.
"""

from __future__ import annotations

import requests
from urllib3.exceptions import ProtocolError


def outcome_unknown(exc: requests.RequestException) -> bool:
    """True when the provider may have received the request although no answer came."""
    if isinstance(exc, requests.ConnectTimeout):
        return False
    if isinstance(exc, requests.ReadTimeout):
        return True
    return isinstance(exc, requests.ConnectionError) and any(isinstance(arg, ProtocolError) for arg in exc.args)
