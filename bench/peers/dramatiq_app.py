"""The peer on Dramatiq: ``dramatiq bench.peers.dramatiq_app --processes 1 --threads N --queues Q``."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench import peers

dramatiq.set_broker(RedisBroker(url=os.environ["PEER_REDIS_URL"]))


@dramatiq.actor(queue_name=os.environ["PEER_QUEUE"])
def deliver(delivery_id: str, text: str) -> None:
    peers.deliver(delivery_id, text)


def enqueue(jobs: list[tuple[str, str]]) -> None:
    for delivery_id, text in jobs:
        deliver.send(delivery_id, text)
