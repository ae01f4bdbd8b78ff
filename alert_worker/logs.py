"""structlog configuration: one JSON object per line on stdout (``ALERT_LOG_FORMAT=console`` for humans).

Delivery events carry ``delivery_id``, ``channel``, ``attempt`` and ``recipient_hash``; a last-line
processor drops any value that looks like a secret-bearing key, as a belt to the executor's braces.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_SECRET_KEYS = frozenset({"recipient", "body", "subject", "password", "token", "auth_token", "webhook_url", "url"})


def _drop_secret_keys(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in _SECRET_KEYS.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


_configured = False


def ensure_logging(log_format: str = "json") -> None:
    """Configure once per process: a job run by plain ``rq worker`` still logs JSON."""
    if not _configured:
        configure_logging(log_format)


def configure_logging(log_format: str = "json", level: int = logging.INFO) -> None:
    """Route structlog and the stdlib ``logging`` (RQ's own lines) through one JSON renderer."""
    global _configured
    _configured = True
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False) if log_format == "console" else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secret_keys,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("rq", "rq.worker", "rq.scheduler"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("twilio").setLevel(logging.WARNING)  # it logs request URLs and headers at INFO
