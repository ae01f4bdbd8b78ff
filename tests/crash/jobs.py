"""A test-only RQ job that dies by SIGKILL at a named point of a delivery (fault injection).

``execute_with_crash`` has the wire signature of ``alert_worker.entrypoint.execute_delivery_job`` and
runs the real executor, but its store, channel and scheduler are wrapped so the work-horse kills
itself with SIGKILL at one boundary. The boundary is ``ALERT_TEST_CRASH_AT`` in the worker's
environment, or, when that is ``by-id``, the second dash-separated field of the delivery id
(``k2-after_send-0007``). Before dying it appends ``<boundary> <delivery id>`` to
``ALERT_TEST_CRASH_LOG`` so the suite counts kills exactly. Only the first job of a delivery is this
wrapper: retries, deferrals and sweeps enqueue the real job, so each delivery is killed at most once.
The package itself carries no test hooks.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any

from alert_worker.entrypoint import build_executor, job_request, run_delivery_job
from alert_worker.executor import DeliveryExecutor, FollowUp
from alert_worker.resources import JobResources
from alert_worker.settings import Settings

BOUNDARIES = ("after_claim", "after_send", "after_write", "enqueue_in_before", "enqueue_in_after")
# The boundaries of a send that carries held deliveries (docs/contract.md §8): struck only when the job's
# message does carry some (its first job found a free slot while others were held).
CARRY_BOUNDARIES = ("carry_after_claim", "carry_after_send", "carry_before_write", "carry_after_write")


def die(boundary: str, delivery_id: str) -> None:
    """Record the kill, then SIGKILL this process: no ``finally``, no RQ bookkeeping."""
    path = os.environ.get("ALERT_TEST_CRASH_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{boundary} {delivery_id}\n".encode())
        finally:
            os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


class _Proxy:
    """Delegates everything to ``inner`` except what a subclass overrides."""

    def __init__(self, inner: Any, boundary: str) -> None:
        self._inner = inner
        self._boundary = boundary

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class CrashingStore(_Proxy):
    def claim(self, new: Any) -> Any:
        claim = self._inner.claim(new)
        if claim is not None and self._boundary == "after_claim":
            die(self._boundary, new.id)
        return claim

    def claim_held(self, **kwargs: Any) -> Any:
        carried = self._inner.claim_held(**kwargs)
        if carried and self._boundary == "carry_after_claim":
            die(self._boundary, kwargs["exclude_id"])  # the carrier's id
        return carried

    def mark_delivered_carrying(self, delivery_id: str, token: str, **kwargs: Any) -> Any:
        if self._boundary == "carry_before_write":
            die(self._boundary, delivery_id)
        written = self._inner.mark_delivered_carrying(delivery_id, token, **kwargs)
        if self._boundary == "carry_after_write":
            die(self._boundary, delivery_id)
        return written

    def mark_delivered(self, delivery_id: str, token: str, **kwargs: Any) -> float:
        latency: float = self._inner.mark_delivered(delivery_id, token, **kwargs)
        if self._boundary == "after_write":
            die(self._boundary, delivery_id)
        return latency


class CrashingChannel(_Proxy):
    def send(self, message: Any) -> Any:
        receipt = self._inner.send(message)  # the provider has accepted it
        if self._boundary == "after_send" or (self._boundary == "carry_after_send" and message.carried):
            die(self._boundary, message.delivery_id)
        return receipt


class CrashingScheduler(_Proxy):
    def schedule(self, follow_up: FollowUp) -> None:
        if self._boundary == "enqueue_in_before":
            die(self._boundary, follow_up.delivery_id)
        self._inner.schedule(follow_up)
        if self._boundary == "enqueue_in_after":
            die(self._boundary, follow_up.delivery_id)


def boundary_for(delivery_id: str) -> str:
    configured = os.environ.get("ALERT_TEST_CRASH_AT", "")
    if configured == "by-id":
        parts = delivery_id.split("-")
        known = (*BOUNDARIES, *CARRY_BOUNDARIES)
        return parts[1] if len(parts) > 2 and parts[1] in known else ""
    return configured if configured in (*BOUNDARIES, *CARRY_BOUNDARIES) else ""


def crashing_executor(boundary: str) -> Any:
    def make(settings: Settings, resources: JobResources) -> DeliveryExecutor:
        executor = build_executor(settings, resources)
        factory = executor.channel_factory
        return dataclasses.replace(
            executor,
            store=CrashingStore(executor.store, boundary),
            channel_factory=lambda channel: CrashingChannel(factory(channel), boundary),  # type: ignore[arg-type,return-value]
            scheduler=CrashingScheduler(executor.scheduler, boundary),
        )

    return make


def execute_with_crash(
    delivery_id: str, channel: str, recipient: str, subject: str, body: str, attempt: int = 0
) -> Any:
    """``execute_delivery_job``, except that the horse SIGKILLs itself at the configured boundary."""
    settings, request = job_request(delivery_id, channel, recipient, subject, body, attempt)
    return run_delivery_job(request, settings=settings, make_executor=crashing_executor(boundary_for(delivery_id)))
