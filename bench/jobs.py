"""The ceiling: an RQ job with our job's arguments that does nothing (module kept import-free)."""

from __future__ import annotations


def noop(delivery_id: str, channel: str, recipient: str, subject: str, body: str, attempt: int = 0) -> None:
    """RQ's own per-job cost: dequeue, (fork), perform, store the result."""
