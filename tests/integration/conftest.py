"""Fixtures shared by the integration tests of the pgml functions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration._pgml import unique
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def dropped_afterwards(cluster: PostgresCluster) -> Iterator[Callable[[str], str]]:
    """Unique table names handed out, then the tables dropped (a fixture's body)."""
    names: list[str] = []

    def new(prefix: str) -> str:
        names.append(unique(prefix))
        return names[-1]

    yield new
    for name in names:
        quoted = '"' + name.replace('"', '""') + '"'
        cluster.psql(f"DROP TABLE IF EXISTS {quoted} CASCADE")


@pytest.fixture(scope="module")
def direct(cluster: PostgresCluster) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection straight to the test server, to look at what the proxy
    did (modules with other needs define their own)."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def scratch(cluster: PostgresCluster) -> Iterator[Callable[[str], str]]:
    """Unique names for tables a test creates; each is dropped afterwards."""
    yield from dropped_afterwards(cluster)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models of the guide's four architectures, under the guide's hub names."""
    from tests.support.tiny_models import build_models_dir

    return build_models_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def guide_datasets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.guide_data import build_guide_datasets

    return build_guide_datasets(tmp_path_factory.mktemp("datasets"))


@pytest.fixture(scope="session")
def tuner(
    cluster: PostgresCluster,
    models_dir: Path,
    guide_datasets_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyProcess]:
    """A proxy that tunes and serves: models and datasets folders, its own model cache."""
    proxy = tuning_proxy(cluster, models_dir, guide_datasets_dir, tmp_path_factory.mktemp("cache"))
    yield proxy
    proxy.stop()


def tuning_proxy(
    cluster: PostgresCluster, models_dir: Path, datasets_dir: Path, cache_dir: Path, *extra: str
) -> ProxyProcess:
    """A proxy that tunes and serves; ``extra`` flags (e.g. ``--dashboard-port``) go last."""
    return ProxyProcess(
        "--upstream",
        cluster.dsn(),
        "--models-dir",
        str(models_dir),
        "--datasets-dir",
        str(datasets_dir),
        "--cache-dir",
        str(cache_dir),
        "--log-level",
        "debug",
        *extra,
        env=OFFLINE,
    ).start()
