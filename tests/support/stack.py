"""A private PostgreSQL, a docs table and a warmed-up proxy, for the hostile-input tests
(fuzz, abandoned sessions, loop stalls, bad input) and their benchmarks.

These tests may leak backends on a proxy that has the bugs they look for, so each module
runs its own PostgreSQL and its own proxy, and ends whatever is left when it is done.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from tests.support.fuzz import MODEL
from tests.support.fuzzrun import CONTROL_APPLICATION, terminate_backends
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

DOCS = "hostile_docs"


def start_proxy(cluster: PostgresCluster, table: str, flags: tuple[str, ...]) -> ProxyProcess:
    proxy = ProxyProcess(
        "--upstream",
        cluster.dsn(),
        "--log-level",
        "info",
        *flags,
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    ).start()
    try:
        warm_up(proxy, table)
    except BaseException:
        proxy.stop()
        raise
    return proxy


@dataclass
class Stack:
    cluster: PostgresCluster
    proxy: ProxyProcess
    table: str
    flags: tuple[str, ...] = ()

    def proxy_alive(self) -> bool:
        return self.proxy.process is not None and self.proxy.process.poll() is None

    def answers(self) -> bool:
        """Whether a new client gets ``SELECT 1`` answered through the proxy."""
        try:
            with psycopg.connect(self.proxy.dsn(), autocommit=True, connect_timeout=5) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.Error:
            return False

    def restart_proxy(self) -> None:
        """A new proxy with the same flags (after a crash); its port is a new one."""
        self.proxy.stop()
        self.proxy = start_proxy(self.cluster, self.table, self.flags)


def docs_table(cluster: PostgresCluster, rows: int, name: str = DOCS) -> str:
    cluster.psql(
        f"CREATE TABLE {name} (id int PRIMARY KEY, body text);"
        f"INSERT INTO {name} SELECT g, 'document number ' || g || ' about '"
        f" || (ARRAY['SQL', 'models', 'vectors', 'proxies'])[1 + g % 4]"
        f" FROM generate_series(1, {rows}) g"
    )
    return name


def warm_up(proxy: ProxyProcess, table: str) -> None:
    """Load the embedding model and the catalog once, so no test times the first load."""
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"SELECT id, pgml.embed('{MODEL}', body) FROM {table} WHERE id <= 3")
        conn.execute("SELECT pgml.version()")


@contextmanager
def private_stack(*proxy_flags: str, rows: int = 20) -> Iterator[Stack]:
    """A private cluster, a docs table of ``rows`` rows, and a warmed-up proxy."""
    cluster = PostgresCluster(max_connections=400).start()
    stack: Stack | None = None
    try:
        table = docs_table(cluster, rows)
        stack = Stack(cluster, start_proxy(cluster, table, proxy_flags), table, proxy_flags)
        yield stack
    finally:
        if stack is not None:
            stack.proxy.stop()
        try:
            terminate_backends(cluster)
            terminate_backends(cluster, CONTROL_APPLICATION)
        except subprocess.CalledProcessError:
            pass
        cluster.stop()
