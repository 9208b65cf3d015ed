"""psycopg 3 through the proxy: every protocol feature it uses gives what PostgreSQL gives."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.types.json import Jsonb

from tests.support.pgserver import PostgresCluster


@pytest.fixture
def conn(proxy_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection through the proxy."""
    with psycopg.connect(proxy_dsn, autocommit=True, connect_timeout=10) as connection:
        yield connection


@pytest.fixture
def direct(direct_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection straight to PostgreSQL, to compute expected values."""
    with psycopg.connect(direct_dsn, autocommit=True, connect_timeout=10) as connection:
        yield connection


@pytest.fixture
def table(cluster: PostgresCluster) -> Iterator[str]:
    """A unique table name; the table is dropped after the test."""
    name = f"pg3_{uuid.uuid4().hex[:10]}"
    yield name
    cluster.psql(f"DROP TABLE IF EXISTS {name}")


def both(
    conn: psycopg.Connection[Any],
    direct: psycopg.Connection[Any],
    run: Callable[[psycopg.Connection[Any]], Any],
) -> Any:
    """Run ``run`` on both connections, assert equal results, return the proxied one."""
    proxied = run(conn)
    expected = run(direct)
    assert proxied == expected
    return proxied


# --- query protocols -------------------------------------------------------------------


def test_simple_protocol(conn: psycopg.Connection[Any], direct: psycopg.Connection[Any]) -> None:
    """Parameterless execute (simple Query), multi-statement results and ClientCursor."""

    def run(c: psycopg.Connection[Any]) -> list[Any]:
        out: list[Any] = []
        with c.cursor() as cur:
            cur.execute("SELECT 1 AS a, 'x'::text AS b; SELECT 2, now() IS NOT NULL", prepare=False)
            out.append((cur.fetchall(), [d.name for d in cur.description or []]))
            assert cur.nextset()
            out.append(cur.fetchall())
            assert not cur.nextset()
        with psycopg.ClientCursor(c) as client:
            client.execute(
                "SELECT %s::int + 1, %s, %s, %s", (41, 'it\'s "quoted"', None, [1, 2, 3])
            )
            out.append(client.fetchall())
            out.append(client.mogrify("SELECT %s", ("o'k",)))
            client.execute("CREATE TEMP TABLE simple_t (v text); INSERT INTO simple_t VALUES ('a')")
            client.execute("SELECT v FROM simple_t; DROP TABLE simple_t")
            out.append(client.fetchall())
        return out

    result = both(conn, direct, run)
    assert result[0] == ([(1, "x")], ["a", "b"])
    assert result[2] == [(42, 'it\'s "quoted"', None, [1, 2, 3])]


def test_extended_protocol_with_parameters(
    conn: psycopg.Connection[Any], direct: psycopg.Connection[Any]
) -> None:
    """Parse/Bind/Execute with typed parameters of many kinds, text results."""
    params = (
        7,
        2**40,
        3.25,
        Decimal("12345678901234567890.000000001"),
        "naïve ✓ text",
        b"\x00\x01\xfe\xff",
        True,
        None,
        dt.date(2024, 2, 29),
        dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        [1, None, 3],
        {"k": [1, 2, {"n": None}]},
    )
    query = "SELECT " + ", ".join(["%s"] * (len(params) - 1)) + ", %s::jsonb"

    def run(c: psycopg.Connection[Any]) -> Any:
        values = (*params[:-1], Jsonb(params[-1]))
        return c.execute(query, values, prepare=False).fetchone()

    result = both(conn, direct, run)
    assert result == params


def test_binary_formats(
    conn: psycopg.Connection[Any], direct: psycopg.Connection[Any], table: str
) -> None:
    """Binary parameters and binary results for bytea, numeric, timestamptz, arrays, json, uuid."""
    payload = bytes(range(256)) * 64
    row = (
        payload,
        Decimal("-98765.43210"),
        dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
        [[1, 2], [3, 4]],
        ["a", None, "c,d"],
        {"a": 1, "b": [True, None]},
        uuid.uuid4(),
    )
    conn.execute(
        f"CREATE TABLE {table} (id serial, b bytea, n numeric, ts timestamptz, "
        "ia int[], ta text[], j jsonb, u uuid)"
    )
    with conn.cursor(binary=True) as cur:
        for _ in range(3):
            cur.execute(
                f"INSERT INTO {table} (b, n, ts, ia, ta, j, u) VALUES (%b, %b, %b, %b, %b, %b, %b)",
                (*row[:5], Jsonb(row[5]), row[6]),
            )

    def run(c: psycopg.Connection[Any]) -> Any:
        with c.cursor(binary=True) as cur:
            cur.execute(f"SELECT b, n, ts, ia, ta, j, u, j::json, md5(b) FROM {table} ORDER BY id")
            assert all(column.type_code for column in cur.description or [])
            assert cur.pgresult is not None and cur.pgresult.fformat(0) == 1
            return cur.fetchall()

    rows = both(conn, direct, run)
    assert len(rows) == 3
    for got in rows:
        assert got[:7] == row
        assert got[7] == row[5]
        assert got[8] == direct.execute("SELECT md5(%s::bytea)", (payload,)).fetchone()[0]


def test_prepared_statements(
    conn: psycopg.Connection[Any], direct: psycopg.Connection[Any]
) -> None:
    """``prepare=True`` creates a named statement that is then executed repeatedly."""
    query = "SELECT %s::int * 3, repeat(%s, %s::int), %s::text IS NULL"
    for i in range(50):
        args = (i, "ab", i % 5, None if i % 2 else "x")
        got = conn.execute(query, args, prepare=True).fetchone()
        assert got == direct.execute(query, args, prepare=False).fetchone()
    prepared = conn.execute(
        "SELECT name, statement, parameter_types::text[] FROM pg_prepared_statements"
    ).fetchall()
    named = [(name, types) for name, statement, types in prepared if "repeat" in statement]
    assert len(named) == 1 and named[0][0].startswith("_pg3_"), prepared
    types = named[0][1]
    assert types[1] == types[3] == "text" and types[0] == types[2]  # int2 or int4: psycopg's choice
    calls = conn.execute(
        "SELECT generic_plans + custom_plans FROM pg_prepared_statements "
        "WHERE statement LIKE '%repeat%'"
    ).fetchone()
    assert calls is not None and calls[0] == 50


def test_pipeline_with_error_in_the_middle(
    conn: psycopg.Connection[Any], direct: psycopg.Connection[Any], table: str
) -> None:
    """A pipeline keeps order; an error aborts its sync block only, later results are right."""
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    before: list[psycopg.Cursor[Any]] = []
    after: list[psycopg.Cursor[Any]] = []
    with conn.pipeline() as pipeline:
        for i in range(20):
            before.append(conn.execute("SELECT %s::int * 2, %s::text", (i, f"v{i}")))
            conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (i, f"v{i}"))
        pipeline.sync()
        with pytest.raises(errors.UniqueViolation), conn.pipeline():
            conn.execute(f"INSERT INTO {table} VALUES (100, 'x')")
            conn.execute(f"INSERT INTO {table} VALUES (0, 'dup')")
            conn.execute(f"INSERT INTO {table} VALUES (101, 'skipped')")
        for i in range(20, 40):
            after.append(conn.execute("SELECT %s::int * 2, %s::text", (i, f"v{i}")))
            conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (i, f"v{i}"))
        count = conn.execute(f"SELECT count(*), sum(id) FROM {table}")
    assert [c.fetchone() for c in before] == [(i * 2, f"v{i}") for i in range(20)]
    assert [c.fetchone() for c in after] == [(i * 2, f"v{i}") for i in range(20, 40)]
    expected = direct.execute(f"SELECT count(*), sum(id) FROM {table}").fetchone()
    assert count.fetchone() == expected == (40, sum(range(40)))
    # The whole failed sync block is one implicit transaction: row 100 was rolled back too.
    assert conn.execute(f"SELECT count(*) FROM {table} WHERE id >= 100").fetchone() == (0,)


def test_server_side_cursor(proxy_dsn: str, direct: psycopg.Connection[Any]) -> None:
    """A named cursor iterated with a small itersize yields the whole set in order."""
    query = "SELECT g, md5(g::text), g % 7 = 0 FROM generate_series(1, 30000) g ORDER BY g"
    expected = direct.execute(query).fetchall()
    with psycopg.connect(proxy_dsn) as conn:
        with conn.cursor(name="big_cursor") as cur:
            cur.itersize = 700
            cur.execute(query)
            got = list(cur)
        with conn.cursor(name="scroll_cursor", scrollable=True) as cur:
            cur.execute(query)
            cur.scroll(29_990, mode="absolute")
            tail = cur.fetchall()
            cur.scroll(0, mode="absolute")
            head = cur.fetchmany(3)
        in_cursor_tx = conn.execute(
            "SELECT count(*) FROM pg_cursors WHERE name = 'big_cursor'"
        ).fetchone()
    assert got == expected
    assert tail == expected[-10:]
    assert head == expected[:3]
    assert in_cursor_tx == (0,)


def test_large_statement_texts(
    conn: psycopg.Connection[Any], direct: psycopg.Connection[Any]
) -> None:
    """Query and Parse messages of several megabytes arrive whole and unchanged."""
    text = "".join(f"{i:07d}é✓" for i in range(300_000))
    inline = f"SELECT length('{text}'), md5('{text}')"

    def run(c: psycopg.Connection[Any]) -> list[Any]:
        out = []
        with psycopg.ClientCursor(c) as client:
            client.execute("SELECT length(%s), md5(%s)", (text, text))
            out.append(client.fetchone())
        out.append(c.execute(inline).fetchone())
        for prepare in (False, True, True):
            out.append(c.execute(inline + " WHERE %s::int = 1", (1,), prepare=prepare).fetchone())
        return out

    result = both(conn, direct, run)
    assert set(result) == {(len(text), hashlib.md5(text.encode()).hexdigest())}


# --- COPY --------------------------------------------------------------------------------


def copy_rows(count: int) -> list[tuple[Any, ...]]:
    return [
        (
            i,
            None if i % 13 == 0 else f"tab\there\nnewline \\ back é {i}",
            Decimal(i) / 8,
            dt.datetime(2020, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i),
            bytes([i % 256]) * (i % 40),
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_copy_in_and_out(
    conn: psycopg.Connection[Any], direct: psycopg.Connection[Any], table: str, binary: bool
) -> None:
    """COPY FROM STDIN via write_row and COPY TO STDOUT via rows() and raw blocks."""
    rows = copy_rows(20_000)
    fmt = "(FORMAT binary)" if binary else ""
    conn.execute(f"CREATE TABLE {table} (id int, note text, n numeric, ts timestamptz, b bytea)")
    with conn.cursor() as cur:
        with cur.copy(f"COPY {table} FROM STDIN {fmt}") as copy:
            if binary:
                copy.set_types(["int4", "text", "numeric", "timestamptz", "bytea"])
            for row in rows:
                copy.write_row(row)
        assert cur.rowcount == len(rows)

    select = f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT {fmt}"

    def copy_out(c: psycopg.Connection[Any]) -> tuple[bytes, list[tuple[Any, ...]]]:
        with c.cursor() as cur:
            with cur.copy(select) as copy:
                raw = b"".join(bytes(block) for block in copy)
            with cur.copy(select) as copy:
                copy.set_types(["int4", "text", "numeric", "timestamptz", "bytea"])
                decoded = list(copy.rows())
        return raw, decoded

    raw, decoded = both(conn, direct, copy_out)
    assert decoded == rows
    assert len(raw) > 500_000
    assert conn.execute("SELECT 'still usable'").fetchone() == ("still usable",)


def test_copy_in_error_is_reported(
    conn: psycopg.Connection[Any], direct: psycopg.Connection[Any], table: str
) -> None:
    """A bad COPY row fails the COPY with the server's error; nothing is loaded."""
    conn.execute(f"CREATE TABLE {table} (id int NOT NULL)")
    with (
        pytest.raises(errors.NotNullViolation),
        conn.cursor() as cur,
        cur.copy(f"COPY {table} FROM STDIN") as copy,
    ):
        for i in range(5000):
            copy.write_row((i,))
        copy.write_row((None,))
    assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


# --- transactions ------------------------------------------------------------------------


def test_transactions_and_savepoints(
    proxy_dsn: str, direct: psycopg.Connection[Any], table: str
) -> None:
    """Commit, rollback, savepoints, and 25P02 after an error until the rollback."""
    with psycopg.connect(proxy_dsn) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
        conn.commit()

        conn.execute(f"INSERT INTO {table} VALUES (1)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        conn.commit()
        assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)

        conn.execute(f"INSERT INTO {table} VALUES (2)")
        conn.rollback()

        with conn.transaction():
            conn.execute(f"INSERT INTO {table} VALUES (3)")
            with pytest.raises(errors.UniqueViolation), conn.transaction():
                conn.execute(f"INSERT INTO {table} VALUES (4)")
                conn.execute(f"INSERT INTO {table} VALUES (1)")
            with conn.transaction():
                conn.execute(f"INSERT INTO {table} VALUES (5)")

        conn.execute(f"INSERT INTO {table} VALUES (6)")
        with pytest.raises(errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        for _ in range(2):
            with pytest.raises(errors.InFailedSqlTransaction) as failed:
                conn.execute("SELECT 1")
            assert failed.value.sqlstate == "25P02"
        conn.rollback()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.commit()

        proxied = conn.execute(f"SELECT array_agg(id ORDER BY id) FROM {table}").fetchone()
    expected = direct.execute(f"SELECT array_agg(id ORDER BY id) FROM {table}").fetchone()
    assert proxied == expected == ([1, 3, 5],)


# --- cancel --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_cancel_from_another_thread(
    conn: psycopg.Connection[Any], direct: psycopg.Connection[Any], method: str
) -> None:
    """A cancel request through the proxy stops pg_sleep(10) within a second."""
    pid = conn.info.backend_pid
    cancelled_at: list[float] = []

    def cancel() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            active = direct.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active'",
                (pid,),
            ).fetchone()
            if active == (1,):
                break
            time.sleep(0.02)
        cancelled_at.append(time.monotonic())
        getattr(conn, method)()

    thread = threading.Thread(target=cancel)
    thread.start()
    try:
        with pytest.raises(errors.QueryCanceled) as caught:
            conn.execute("SELECT pg_sleep(10)")
        raised_at = time.monotonic()
    finally:
        thread.join()
    assert caught.value.sqlstate == "57014"
    assert raised_at - cancelled_at[0] < 1.0
    assert conn.execute("SELECT 'usable', pg_backend_pid()").fetchone() == ("usable", pid)


def test_cancel_when_idle_is_harmless(conn: psycopg.Connection[Any]) -> None:
    """A cancel with nothing running changes nothing; the next query succeeds."""
    conn.cancel_safe()
    time.sleep(0.2)
    assert conn.execute("SELECT 42").fetchone() == (42,)


# --- asynchronous messages -----------------------------------------------------------------


def listen_and_notify(listener: psycopg.Connection[Any], notifier: psycopg.Connection[Any]) -> None:
    channel = f"chan_{uuid.uuid4().hex[:8]}"
    listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    payloads = [f"payload {i} é" for i in range(5)]
    for payload in payloads:
        notifier.execute("SELECT pg_notify(%s, %s)", (channel, payload))
    received = list(listener.notifies(timeout=3.0, stop_after=len(payloads)))
    assert [n.payload for n in received] == payloads
    assert {n.channel for n in received} == {channel}
    assert {n.pid for n in received} == {notifier.info.backend_pid}

    # One more while the listener is idle and not reading: delivered on its next wait.
    notifier.execute(sql.SQL("NOTIFY {}, 'late'").format(sql.Identifier(channel)))
    time.sleep(0.1)
    late = list(listener.notifies(timeout=3.0, stop_after=1))
    assert [n.payload for n in late] == ["late"]
    listener.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel)))


def test_listen_notify_between_proxied_connections(
    conn: psycopg.Connection[Any], proxy_dsn: str
) -> None:
    """NOTIFY on one proxied connection reaches LISTEN on another."""
    with psycopg.connect(proxy_dsn, autocommit=True) as other:
        listen_and_notify(conn, other)


def test_listen_notify_proxied_and_direct(
    conn: psycopg.Connection[Any], direct: psycopg.Connection[Any]
) -> None:
    """Notifications cross between a proxied and a direct connection, both ways."""
    listen_and_notify(conn, direct)
    listen_and_notify(direct, conn)


def test_parameter_status(conn: psycopg.Connection[Any], direct: psycopg.Connection[Any]) -> None:
    """SET application_name / TimeZone changes arrive as ParameterStatus messages."""
    for c in (conn, direct):
        c.execute("SET application_name = 'pg3 status test'")
        c.execute("SET TimeZone = 'Asia/Kathmandu'")
    for name in ("application_name", "TimeZone", "DateStyle", "server_version", "client_encoding"):
        assert conn.info.parameter_status(name) == direct.info.parameter_status(name)
    assert conn.info.parameter_status("application_name") == "pg3 status test"
    assert conn.info.parameter_status("TimeZone") == "Asia/Kathmandu"
    stamp = "SELECT '2024-06-01 00:00:00+00'::timestamptz::text"
    assert conn.execute(stamp).fetchone() == direct.execute(stamp).fetchone()
    assert conn.execute(stamp).fetchone() == ("2024-06-01 05:45:00+05:45",)
    with conn.transaction():
        conn.execute("SET LOCAL application_name = 'inside'")
        assert conn.info.parameter_status("application_name") == "inside"
    assert conn.info.parameter_status("application_name") == "pg3 status test"


def test_backend_pid(conn: psycopg.Connection[Any], direct: psycopg.Connection[Any]) -> None:
    """The pid the client was given is the real backend's pid."""
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert pid == (conn.info.backend_pid,)
    seen = direct.execute(
        "SELECT client_addr IS NOT NULL FROM pg_stat_activity WHERE pid = %s", pid
    ).fetchone()
    assert seen == (True,)
