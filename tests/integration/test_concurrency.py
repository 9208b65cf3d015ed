"""Many clients at once through the proxy, and no upstream session left behind afterwards."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from tests.support.pgserver import PostgresCluster

CLIENTS = 100
ROWS_PER_CLIENT = 10


@pytest.fixture
def table(cluster: PostgresCluster) -> Iterator[str]:
    """A shared table for all clients of one test; dropped afterwards."""
    name = f"conc_{uuid.uuid4().hex[:10]}"
    cluster.psql(f"CREATE TABLE {name} (client int, n int, PRIMARY KEY (client, n))")
    yield name
    cluster.psql(f"DROP TABLE IF EXISTS {name}")


async def sessions_named(direct: asyncpg.Connection, app: str) -> int:
    count = await direct.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app
    )
    return int(count)


async def wait_for_sessions(direct: asyncpg.Connection, app: str, want: int, within: float) -> int:
    """Poll pg_stat_activity until ``want`` sessions named ``app`` remain; return the last count."""
    deadline = time.monotonic() + within
    while True:
        count = await sessions_named(direct, app)
        if count == want or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.05)


async def client_work(conn: asyncpg.Connection, i: int, table: str) -> tuple[int, ...]:
    """A few queries and one transaction; returns what the server answered."""
    square = await conn.fetchval("SELECT $1::int * $1::int", i)
    total = await conn.fetchval("SELECT sum(g)::int FROM generate_series(0, $1::int) g", i)
    await conn.fetchval("SELECT pg_sleep(0.05)")
    async with conn.transaction():
        await conn.executemany(
            f"INSERT INTO {table} VALUES ($1, $2)", [(i, n) for n in range(ROWS_PER_CLIENT)]
        )
        mine = await conn.fetchval(f"SELECT sum(n) FROM {table} WHERE client = $1", i)
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    assert pid == conn.get_server_pid()
    return square, total, mine, pid


def test_hundred_concurrent_clients(proxy_dsn: str, direct_dsn: str, table: str) -> None:
    """100 asyncpg clients at once: right answers, one backend each, all gone after close."""
    app = f"conc_{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        direct = await asyncpg.connect(direct_dsn)
        try:
            clients = await asyncio.gather(
                *(
                    asyncpg.connect(
                        proxy_dsn, server_settings={"application_name": app}, timeout=15
                    )
                    for _ in range(CLIENTS)
                )
            )
            try:
                assert await sessions_named(direct, app) == CLIENTS
                results = await asyncio.gather(
                    *(client_work(c, i, table) for i, c in enumerate(clients))
                )
            finally:
                await asyncio.gather(*(c.close(timeout=5) for c in clients))

            for i, (square, total, mine, _) in enumerate(results):
                assert (square, total, mine) == (
                    i * i,
                    i * (i + 1) // 2,
                    sum(range(ROWS_PER_CLIENT)),
                )
            assert len({pid for *_, pid in results}) == CLIENTS
            stored = await direct.fetchrow(
                f"SELECT count(*), count(DISTINCT client), sum(client) FROM {table}"
            )
            assert tuple(stored) == (
                CLIENTS * ROWS_PER_CLIENT,
                CLIENTS,
                ROWS_PER_CLIENT * sum(range(CLIENTS)),
            )
            assert await wait_for_sessions(direct, app, 0, within=5) == 0
        finally:
            await direct.close()

    asyncio.run(main())


def test_abandoned_clients_leave_no_sessions(proxy_dsn: str, direct_dsn: str) -> None:
    """Clients that drop their sockets mid-query or mid-transaction leave no backend behind.

    A backend busy in pg_sleep does not notice a closed socket on its own; it only goes
    away within the deadline if the proxy cancels the running statement.
    """
    app = f"gone_{uuid.uuid4().hex[:8]}"
    count = 40

    async def main() -> None:
        direct = await asyncpg.connect(direct_dsn)
        try:
            clients = await asyncio.gather(
                *(
                    asyncpg.connect(
                        proxy_dsn, server_settings={"application_name": app}, timeout=15
                    )
                    for _ in range(count)
                )
            )
            sleepers = clients[: count // 2]
            idle_in_tx = clients[count // 2 :]
            for conn in idle_in_tx:
                await conn.execute("BEGIN; SELECT 1")
            queries = [asyncio.ensure_future(c.fetch("SELECT pg_sleep(10)")) for c in sleepers]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                active = await direct.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = $1 AND state = 'active'",
                    app,
                )
                if active == len(sleepers):
                    break
                await asyncio.sleep(0.05)
            assert active == len(sleepers)

            dropped_at = time.monotonic()
            for conn in clients:
                conn.terminate()
            await asyncio.gather(*queries, return_exceptions=True)
            left = await wait_for_sessions(direct, app, 0, within=3)
            assert left == 0, f"{left} upstream sessions still open"
            assert time.monotonic() - dropped_at < 3
        finally:
            await direct.close()

    asyncio.run(main())
