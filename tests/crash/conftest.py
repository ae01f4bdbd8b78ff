"""Private PostgreSQL, Redis and fake providers for the crash scenarios of one test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.crash.harness import Cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster() as running:
        yield running
