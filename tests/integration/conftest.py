"""Fixtures shared by the integration tests of the pgml functions."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.integration._pgml import unique
from tests.support.pgserver import PostgresCluster


@pytest.fixture
def scratch(cluster: PostgresCluster) -> Iterator[Callable[[str], str]]:
    """Unique names for tables a test creates; each is dropped afterwards."""
    names: list[str] = []

    def new(prefix: str) -> str:
        names.append(unique(prefix))
        return names[-1]

    yield new
    for name in names:
        quoted = '"' + name.replace('"', '""') + '"'
        cluster.psql(f"DROP TABLE IF EXISTS {quoted} CASCADE")
