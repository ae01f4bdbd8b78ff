"""structlog configuration: one JSON object per line (``ALERT_LOG_FORMAT=console`` for humans).

Our own events and RQ's stdlib ``logging`` lines go through one renderer, so every line a worker prints
is JSON with ``event``, ``level``, ``timestamp`` (ISO, UTC) and ``logger``. RQ only attaches its own
(plain-text, coloured) handlers when no ancestor logger has a handler; we install one on the root
logger first. Delivery events carry ``delivery_id``, ``channel``, ``attempt`` and ``recipient_hash``;
RQ lines about one of our jobs get ``job_id`` and ``delivery_id`` parsed from the job id
(``rq_jobs.parse_job_id``, next to the code that writes it). A last
processor redacts any value under a secret-bearing key, as a belt to the executor's braces.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from alert_worker.redaction import escape_controls

_SECRET_KEYS = frozenset({"recipient", "body", "subject", "password", "token", "auth_token", "webhook_url", "url"})
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _drop_secret_keys(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in _SECRET_KEYS.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


def _rq_job_context(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Plain RQ lines: strip colour codes, and name the job and delivery they are about."""
    event = event_dict.get("event")
    if not isinstance(event, str):
        return event_dict
    event = _ANSI.sub("", event)
    if "\n" in event:  # psycopg_pool's warnings carry libpq's multi-line messages: one line of text
        event = " ".join(part.strip() for part in event.splitlines() if part.strip())
    event_dict["event"] = event
    if "alert-" not in event or "job_id" in event_dict:
        return event_dict
    # Imported here: a line naming one of our jobs comes from RQ, which is loaded already; an operator
    # command's stray library warning must not load rq.
    from alert_worker.rq_jobs import parse_job_id

    found = parse_job_id(event)
    if found:
        event_dict["job_id"] = found.job_id
        if "delivery_id" not in event_dict and found.delivery_id is not None:
            event_dict["delivery_id"] = found.delivery_id
    return event_dict


def _escape_for_terminal(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Console format only (JSON escapes anyway): a delivery id holding terminal escapes prints as ``\\x1b``."""
    for key, value in event_dict.items():
        if isinstance(value, str) and key != "exception":  # a traceback keeps its lines
            event_dict[key] = escape_controls(value)
    return event_dict


_configured = False


def ensure_logging(log_format: str = "json") -> None:
    """Configure once per process: a job run by plain ``rq worker`` still logs JSON."""
    if not _configured:
        configure_logging(log_format)


def configure_logging(
    log_format: str = "json",
    level: int | str = logging.INFO,
    *,
    stream: TextIO | None = None,
    rq_level: int | str = logging.WARNING,
) -> None:
    """Route structlog and the stdlib ``logging`` (RQ's own lines, warnings) through one renderer.

    ``stream`` defaults to stdout (the worker); operator commands pass stderr so their own output
    on stdout stays clean. ``level`` is ``ALERT_LOG_LEVEL``; RQ's loggers get ``rq_level``
    (``ALERT_RQ_LOG_LEVEL``, default WARNING: RQ logs two INFO lines per job).
    """
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
        foreign_pre_chain=[*shared, _rq_job_context],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            *([_escape_for_terminal] if log_format == "console" else []),
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("rq", "rq.worker", "rq.job", "rq.scheduler"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.getLogger("rq").setLevel(rq_level)
    logging.captureWarnings(True)  # a library warning becomes a JSON line too, not free text on stderr
    logging.getLogger("twilio").setLevel(logging.WARNING)  # it logs request URLs and headers at INFO
