"""alert_worker: delivers alerts by e-mail, Slack and SMS from RQ jobs, with retries, rate limits
and a poison queue, recording every attempt in Postgres."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "execute_delivery_job", "send_alert"]


def __getattr__(name: str) -> Any:
    # Lazy re-exports keep `import alert_worker` cheap for tools that only need the version.
    if name == "execute_delivery_job":
        from alert_worker.entrypoint import execute_delivery_job

        return execute_delivery_job
    if name == "send_alert":
        from alert_worker.producer import send_alert

        return send_alert
    raise AttributeError(name)
