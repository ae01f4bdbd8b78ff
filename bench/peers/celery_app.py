"""The peer on Celery: ``celery -A bench.peers.celery_app worker -P threads -c N -Q Q``."""

from __future__ import annotations

import os

from celery import Celery

from bench import peers

app = Celery("bench_peers", broker=os.environ["PEER_REDIS_URL"])
app.conf.task_default_queue = os.environ["PEER_QUEUE"]


@app.task
def deliver(delivery_id: str, text: str) -> None:
    peers.deliver(delivery_id, text)


def enqueue(jobs: list[tuple[str, str]]) -> None:
    for delivery_id, text in jobs:
        deliver.delay(delivery_id, text)
