"""Shared fixtures: one private PostgreSQL and one proxy in front of it per test run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import pytest

from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess


def missing_tool(reason: str) -> NoReturn:
    """Skip a test whose tool is not installed; with ``CI`` set, fail it instead (CI
    installs every tool: ``scripts/test-tools.sh``)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so a missing tool fails the test", pytrace=False)
    pytest.skip(reason)


PASSWORDS = {"md5_user": "md5 secret", "scram_user": "scram secret", "plain_user": "plain secret"}


@pytest.fixture(scope="session")
def cluster() -> Iterator[PostgresCluster]:
    server = PostgresCluster().start()
    server.psql(
        "SET password_encryption = 'md5'; "
        f"CREATE ROLE md5_user LOGIN PASSWORD '{PASSWORDS['md5_user']}'"
    )
    for user in ("scram_user", "plain_user"):
        server.psql(f"CREATE ROLE {user} LOGIN PASSWORD '{PASSWORDS[user]}'")
    server.psql("GRANT ALL ON SCHEMA public TO PUBLIC")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def proxy(cluster: PostgresCluster) -> Iterator[ProxyProcess]:
    process = ProxyProcess("--upstream", cluster.dsn(), "--log-level", "info").start()
    yield process
    process.stop()


@pytest.fixture
def direct_dsn(cluster: PostgresCluster) -> str:
    return cluster.dsn()


@pytest.fixture
def proxy_dsn(proxy: ProxyProcess) -> str:
    return proxy.dsn()
