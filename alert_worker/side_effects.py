"""What a best-effort side effect (a metric, a follow-up enqueue, provider feedback) may fail with.

Side effects log and never fail a delivery, but only for these errors: the stores being unreachable or
refusing. Anything else propagates, above all the job timeout RQ's death penalty raises inside the running
thread (an ``Exception`` subclass): swallowing it would let a delivery run past ``ALERT_JOB_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import psycopg
import redis

SIDE_EFFECT_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, psycopg.Error, OSError)
