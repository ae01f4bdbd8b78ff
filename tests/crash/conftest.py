"""One private PostgreSQL cluster, Redis and fake providers for every crash scenario of a pytest run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.crash.harness import Cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with Cluster() as running:
        yield running
