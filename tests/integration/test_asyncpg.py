"""asyncpg through the proxy: prepared statements, COPY, binary codecs, cancel, notifications."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import pytest

from tests.support.pgserver import PostgresCluster

T = TypeVar("T")
Work = Callable[[asyncpg.Connection], Awaitable[T]]


@pytest.fixture
def table(cluster: PostgresCluster) -> Iterator[str]:
    """A unique table name; the table is dropped after the test."""
    name = f"apg_{uuid.uuid4().hex[:10]}"
    yield name
    cluster.psql(f"DROP TABLE IF EXISTS {name}")


def run(dsn: str, work: Work[T]) -> T:
    """Connect to ``dsn``, run ``work`` on the connection, close it, return the result."""

    async def main() -> T:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await work(conn)
        finally:
            await conn.close(timeout=5)

    return asyncio.run(main())


def test_prepared_statement_many_times(proxy_dsn: str, direct_dsn: str) -> None:
    """``conn.prepare`` once, then fetch with different arguments many times."""

    async def work(conn: asyncpg.Connection) -> list[Any]:
        stmt = await conn.prepare(
            "SELECT $1::int * 2 AS doubled, repeat($2::text, $1::int % 4) AS text, "
            "$3::numeric / 3 AS third"
        )
        assert [a.name for a in stmt.get_attributes()] == ["doubled", "text", "third"]
        assert [t.name for t in stmt.get_parameters()] == ["int4", "text", "numeric"]
        results = []
        for i in range(300):
            row = await stmt.fetchrow(i, f"é{i}", Decimal(i))
            results.append(tuple(row))
        results.append(await stmt.fetchval(7, "x", Decimal("1.5"), column=1))
        results.append([tuple(r) for r in await conn.fetch("SELECT $1::text", "cached")])
        return results

    proxied = run(proxy_dsn, work)
    assert proxied == run(direct_dsn, work)
    assert proxied[5][:2] == (10, "é5")


def test_executemany(proxy_dsn: str, direct_dsn: str, table: str) -> None:
    """``executemany`` inserts every row; sums match what Python computes."""
    rows = [(i, f"name {i}", i * 0.5) for i in range(2000)]

    async def work(conn: asyncpg.Connection) -> Any:
        await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, score float8)")
        await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2, $3)", rows)
        return tuple(await conn.fetchrow(f"SELECT count(*), sum(id), sum(score) FROM {table}"))

    async def check(conn: asyncpg.Connection) -> Any:
        return tuple(await conn.fetchrow(f"SELECT count(*), sum(id), sum(score) FROM {table}"))

    expected = (len(rows), sum(r[0] for r in rows), sum(r[2] for r in rows))
    assert run(proxy_dsn, work) == run(direct_dsn, check) == expected


def test_executemany_error_rolls_back(proxy_dsn: str, direct_dsn: str, table: str) -> None:
    """A failing row makes ``executemany`` raise and insert nothing; the connection goes on."""

    async def work(conn: asyncpg.Connection) -> Any:
        await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
        rows = [(i,) for i in range(500)] + [(3,)]
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.executemany(f"INSERT INTO {table} VALUES ($1)", rows)
        return await conn.fetchval("SELECT 'after'")

    assert run(proxy_dsn, work) == "after"
    assert run(direct_dsn, lambda c: c.fetchval(f"SELECT count(*) FROM {table}")) == 0


def test_copy_records_and_copy_from_query(proxy_dsn: str, direct_dsn: str, table: str) -> None:
    """Binary COPY FROM via ``copy_records_to_table``; COPY TO via ``copy_from_query``."""
    records = [
        (i, f"rec\t{i}\n", None if i % 11 == 0 else Decimal(i) / 7, uuid.UUID(int=i))
        for i in range(25_000)
    ]
    query = f"SELECT * FROM {table} ORDER BY id"

    async def load(conn: asyncpg.Connection) -> str:
        await conn.execute(f"CREATE TABLE {table} (id int, note text, n numeric, u uuid)")
        return await conn.copy_records_to_table(table, records=records)

    async def dump(conn: asyncpg.Connection) -> tuple[bytes, bytes, str]:
        text, binary = io.BytesIO(), io.BytesIO()
        status = await conn.copy_from_query(query, output=text)
        await conn.copy_from_query(query, output=binary, format="binary")
        return text.getvalue(), binary.getvalue(), status

    assert run(proxy_dsn, load) == "COPY 25000"
    proxied = run(proxy_dsn, dump)
    assert proxied == run(direct_dsn, dump)
    assert proxied[2] == "COPY 25000"
    rows = run(direct_dsn, lambda c: c.fetch(query))
    assert [tuple(r) for r in rows] == records


def test_nested_transactions(proxy_dsn: str, direct_dsn: str, table: str) -> None:
    """``conn.transaction()`` nested: inner savepoints roll back alone, the outer commits."""

    async def work(conn: asyncpg.Connection) -> list[int]:
        await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {table} VALUES (1)")
            with pytest.raises(asyncpg.UniqueViolationError):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES (2)")
                    async with conn.transaction():
                        await conn.execute(f"INSERT INTO {table} VALUES (3)")
                    await conn.execute(f"INSERT INTO {table} VALUES (1)")
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {table} VALUES (4)")
                try:
                    async with conn.transaction():
                        await conn.execute(f"INSERT INTO {table} VALUES (5)")
                        raise LookupError("roll back this savepoint")
                except LookupError:
                    pass
            assert conn.is_in_transaction()
        assert not conn.is_in_transaction()
        with pytest.raises(asyncpg.DivisionByZeroError):
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {table} VALUES (6)")
                await conn.fetchval("SELECT 1 / 0")
        return [r[0] for r in await conn.fetch(f"SELECT id FROM {table} ORDER BY id")]

    assert run(proxy_dsn, work) == [1, 4]
    rows = run(direct_dsn, lambda c: c.fetch(f"SELECT id FROM {table} ORDER BY id"))
    assert [r[0] for r in rows] == [1, 4]


def test_binary_types(proxy_dsn: str, direct_dsn: str, table: str) -> None:
    """Binary codecs round-trip through the proxy, including a 1 MB bytea and jsonb."""
    blob = os.urandom(1024 * 1024)
    values = (
        Decimal("-12345678901234567890.123456789"),
        dt.datetime(2024, 2, 29, 12, 30, 45, 123456, tzinfo=dt.UTC),
        dt.timedelta(days=3, hours=4, minutes=5, seconds=6, microseconds=7),
        uuid.uuid4(),
        {"key": ["value", 1, 2.5, None, True], "nested": {"é": "✓"}},
        [1, -2, None, 2**31 - 1],
        blob,
    )

    async def setup(conn: asyncpg.Connection) -> None:
        await conn.set_type_codec(
            "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )

    async def write(conn: asyncpg.Connection) -> tuple[Any, ...]:
        await setup(conn)
        await conn.execute(
            f"CREATE TABLE {table} (n numeric, ts timestamptz, iv interval, u uuid, "
            "j jsonb, arr int[], b bytea)"
        )
        await conn.execute(f"INSERT INTO {table} VALUES ($1, $2, $3, $4, $5, $6, $7)", *values)
        return tuple(await conn.fetchrow(f"SELECT * FROM {table}"))

    async def read(conn: asyncpg.Connection) -> tuple[Any, ...]:
        await setup(conn)
        row = await conn.fetchrow(
            f"SELECT *, md5(b), length(b), iv::text, j->'nested'->>'é' FROM {table}"
        )
        return tuple(row)

    written = run(proxy_dsn, write)
    assert written == values
    proxied = run(proxy_dsn, read)
    assert proxied == run(direct_dsn, read)
    assert proxied[7:] == (
        hashlib.md5(blob).hexdigest(),
        len(blob),
        "3 days 04:05:06.000007",
        "✓",
    )


def test_cancel_with_wait_for(proxy_dsn: str, direct_dsn: str) -> None:
    """A timed-out fetch is cancelled upstream quickly; the connection stays usable.

    The follow-up query would wait for the whole pg_sleep if the cancel got lost.
    """

    async def work(conn: asyncpg.Connection) -> tuple[float, float, Any, Any]:
        pid = conn.get_server_pid()
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.fetch("SELECT pg_sleep(10)"), 0.5)
        timed_out = time.monotonic() - began
        after = await conn.fetchrow("SELECT 'usable', pg_backend_pid()")
        answered = time.monotonic() - began
        check = await asyncpg.connect(direct_dsn)
        try:
            state = await check.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid)
        finally:
            await check.close()
        return timed_out, answered, tuple(after), (pid, state)

    timed_out, answered, after, (pid, state) = run(proxy_dsn, work)
    assert timed_out < 1.5
    assert answered < 2.0
    assert after == ("usable", pid)
    assert state == "idle"


def test_add_listener(proxy_dsn: str, direct_dsn: str) -> None:
    """``add_listener`` callbacks receive notifications sent via the proxy and directly."""
    channel = f"apg_{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        listener = await asyncpg.connect(proxy_dsn)
        proxied = await asyncpg.connect(proxy_dsn)
        direct = await asyncpg.connect(direct_dsn)
        received: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue()

        def callback(_conn: object, pid: int, chan: str, payload: str) -> None:
            received.put_nowait((pid, chan, payload))

        try:
            await listener.add_listener(channel, callback)
            expected = []
            for i, sender in enumerate((proxied, direct, proxied, listener)):
                payload = f"message {i} ✓"
                await sender.execute("SELECT pg_notify($1, $2)", channel, payload)
                expected.append((sender.get_server_pid(), channel, payload))
            got = [await asyncio.wait_for(received.get(), 3) for _ in expected]
            assert got == expected
            await listener.remove_listener(channel, callback)
            await proxied.execute("SELECT pg_notify($1, 'unheard')", channel)
            assert await listener.fetchval("SELECT 1") == 1
            await asyncio.sleep(0.1)
            assert received.empty()
        finally:
            for conn in (listener, proxied, direct):
                await conn.close()

    asyncio.run(main())


def test_server_pid_and_settings(proxy_dsn: str, direct_dsn: str) -> None:
    """The server pid and startup settings a client sees are the real backend's."""

    async def work(conn: asyncpg.Connection) -> tuple[Any, ...]:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await conn.execute("SET TimeZone = 'America/St_Johns'")
        return (
            pid == conn.get_server_pid(),
            conn.get_settings().TimeZone,
            conn.get_server_version()[:2],
            await conn.fetchval("SELECT current_setting('application_name')"),
        )

    dsn_args = "?application_name=apg_settings"
    assert run(proxy_dsn + dsn_args, work) == run(direct_dsn + dsn_args, work)
    assert run(proxy_dsn + dsn_args, work)[:2] == (True, "America/St_Johns")
