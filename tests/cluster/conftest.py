"""Fixtures of the cluster tests: a private PgBouncer and a Sentinel set, started once per module."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.cluster.pgbouncer import PgBouncer, available, running_pgbouncer
from tests.cluster.sentinel import SentinelSet, running_sentinel_set
from tests.conftest import ADMIN_DSN


@pytest.fixture(scope="module")
def pgbouncer() -> Iterator[PgBouncer]:
    """PgBouncer 1.x in transaction mode on a free loopback port, in front of the test Postgres."""
    if not available():
        pytest.skip("pgbouncer is not installed (apt-get install -y pgbouncer)")
    with running_pgbouncer(upstream=ADMIN_DSN) as bouncer:
        yield bouncer


@pytest.fixture(scope="module")
def sentinel_set() -> Iterator[SentinelSet]:
    """A primary, a replica and three sentinels (quorum 2) on free loopback ports."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with running_sentinel_set() as found:
        yield found
