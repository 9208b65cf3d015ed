"""Each row of a call's scope is produced once: volatile functions, LIMIT without ORDER
BY, TABLESAMPLE and concurrent writers meet each row once, and every value returned or
written is the call's value for that row's own argument.  Through psql, psycopg's
simple protocol, and psycopg's extended protocol in binary."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.integration._pgml import (
    MODEL,
    Answer,
    Reference,
    assert_close,
    client,
    client_answer,
    psql_answer,
    start_proxy,
    unique,
    warm_up,
)
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

ROWS = 2000
DISTINCT = 120


def body(i: int) -> str:
    return f"review {i % DISTINCT} of the each-row test"


Run = Callable[[str], Answer]


@pytest.fixture(scope="module")
def pgml_proxy(cluster: PostgresCluster) -> Iterator[ProxyProcess]:
    """Batches of 32 rows, so that most statements take several batches."""
    process = start_proxy(cluster, batch_size=32)
    warm_up(process.dsn())
    Reference.embed([body(i) for i in range(DISTINCT)])
    yield process
    process.stop()


@pytest.fixture
def table(cluster: PostgresCluster) -> Iterator[str]:
    name = unique("r")
    cluster.psql(
        f"CREATE TABLE {name} (i int PRIMARY KEY, body text, e real[]); "
        f"INSERT INTO {name} (i, body) SELECT g, 'review ' || (g % {DISTINCT}) "
        f"|| ' of the each-row test' FROM generate_series(1, {ROWS}) AS g"
    )
    yield name
    cluster.psql(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def direct(direct_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture(params=["psql", "simple", "extended-binary"])
def run(
    request: pytest.FixtureRequest,
    pgml_proxy: ProxyProcess,
    table: str,
    scratch: Callable[[str], str],
) -> Iterator[Run]:
    """One statement through psql, psycopg's ClientCursor, or psycopg's server-side
    binding with binary results (the model's name a bound parameter)."""
    if request.param == "psql":
        yield lambda sql: psql_answer(pgml_proxy.dsn(), sql.replace("%s", f"'{MODEL}'"))
        return
    if request.param == "simple":
        with client(pgml_proxy.dsn()) as conn:
            yield lambda sql: client_answer(conn, sql.replace("%s", f"'{MODEL}'"))
        return
    with psycopg.connect(pgml_proxy.dsn(), autocommit=True) as conn:

        def extended(sql: str) -> Answer:
            with conn.cursor(binary=True) as cur:
                cur.execute(sql, [MODEL] * sql.count("%s"))
                rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
                names = [d.name for d in cur.description or []]
                return Answer(names, rows, cur.statusmessage or "")

        yield extended


def each_matches(rows: list[tuple[Any, ...]], column: int = 1) -> None:
    """Every row's embedding (at ``column``) is its own ``i``'s (column 0)."""
    assert rows
    for row in rows:
        assert_close(row[column], Reference.one(body(row[0])))


def stored(direct: psycopg.Connection[Any], sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in direct.execute(sql).fetchall()]


def test_order_by_random_limit(run: Run, table: str) -> None:
    answer = run(f"SELECT i, pgml.embed(%s, body) e FROM {table} ORDER BY random() LIMIT 20")
    assert answer.tag == "SELECT 20" and len({r[0] for r in answer.rows}) == 20
    each_matches(answer.rows)
    counted = run(
        f"SELECT count(*), count(e) FROM (SELECT i, pgml.embed(%s, body) e FROM {table} "
        "ORDER BY random() LIMIT 20) s"
    )
    assert counted.rows == [(20, 20)]


def test_volatile_argument(run: Run, table: str) -> None:
    answer = run(
        f"SELECT i, pgml.embed(%s, body || (random() * 3)::int::text) FROM {table} WHERE i <= 50"
    )
    assert answer.tag == "SELECT 50"
    for i, vector in answer.rows:
        assert vector is not None
        candidates = Reference.embed([body(i) + str(k) for k in range(4)])
        assert (
            min(max(abs(a - b) for a, b in zip(vector, c, strict=True)) for c in candidates) < 1e-5
        )


def test_volatile_where(run: Run, table: str) -> None:
    answer = run(f"SELECT i, pgml.embed(%s, body) FROM {table} WHERE random() < 0.05")
    assert 0 < len(answer.rows) < ROWS / 4
    each_matches(answer.rows)


def test_limit_and_offset_without_order(run: Run, table: str) -> None:
    answer = run(f"SELECT i, pgml.embed(%s, body) FROM {table} LIMIT 30 OFFSET 7")
    assert answer.tag == "SELECT 30"
    each_matches(answer.rows)


def test_tablesample(run: Run, table: str) -> None:
    answer = run(f"SELECT i, pgml.embed(%s, body) FROM {table} TABLESAMPLE BERNOULLI (3)")
    assert 0 < len(answer.rows) < ROWS / 4
    each_matches(answer.rows)


def test_set_returning_function_in_from(run: Run) -> None:
    answer = run(
        "SELECT g, pgml.embed(%s, 'review ' || g || ' of the each-row test') "
        "FROM generate_series(1, 60) AS g WHERE random() < 0.5"
    )
    each_matches(answer.rows)


def test_call_in_where_next_to_random(run: Run, table: str) -> None:
    limit = -0.05
    answer = run(
        f"SELECT i FROM {table} WHERE random() < 0.2 AND (pgml.embed(%s, body))[1] > {limit}"
    )
    assert answer.rows
    for (i,) in answer.rows:
        assert Reference.one(body(i))[0] > limit


def test_nextval_runs_once_per_row_returned(
    run: Run, table: str, direct: psycopg.Connection[Any]
) -> None:
    sequence = unique("seq")
    direct.execute(f"CREATE SEQUENCE {sequence}")
    try:
        answer = run(
            f"SELECT i, pgml.embed(%s, body), nextval('{sequence}') FROM {table} ORDER BY i LIMIT 5"
        )
        assert [r[2] for r in answer.rows] == [1, 2, 3, 4, 5]
        each_matches(answer.rows)
        assert stored(direct, f"SELECT last_value FROM {sequence}") == [(5,)]
    finally:
        direct.execute(f"DROP SEQUENCE {sequence}")


def test_insert_select_order_by_random_limit(
    run: Run, table: str, direct: psycopg.Connection[Any], scratch: Callable[[str], str]
) -> None:
    out = scratch("out")
    direct.execute(f"CREATE TABLE {out} (i int, e real[])")
    answer = run(
        f"INSERT INTO {out} SELECT i, pgml.embed(%s, body) FROM {table} ORDER BY random() LIMIT 10"
    )
    assert answer.tag == "INSERT 0 10"
    rows = stored(direct, f"SELECT i, e FROM {out}")
    assert len(rows) == 10
    each_matches(rows)


def test_update_where_random(run: Run, table: str, direct: psycopg.Connection[Any]) -> None:
    answer = run(f"UPDATE {table} SET e = pgml.embed(%s, body) WHERE random() < 0.01")
    updated = int(answer.tag.split()[1])
    assert updated > 0
    rows = stored(direct, f"SELECT i, e FROM {table} WHERE e IS NOT NULL")
    assert len(rows) == updated
    each_matches(rows)


def test_create_table_as_over_a_volatile_where(
    run: Run, table: str, direct: psycopg.Connection[Any], scratch: Callable[[str], str]
) -> None:
    out = scratch("ctas")
    answer = run(
        f"CREATE TABLE {out} AS SELECT i, pgml.embed(%s, body) e FROM {table} WHERE random() < 0.02"
    )
    count = int(answer.tag.split()[1])
    rows = stored(direct, f"SELECT i, e FROM {out}")
    assert count == len(rows) > 0
    each_matches(rows)


def test_correlated_subquery_is_refused_naming_the_construct(run: Run, table: str) -> None:
    with pytest.raises((AssertionError, psycopg.Error)) as raised:
        run(
            f"SELECT count(*) FROM {table} d WHERE EXISTS (SELECT 1 FROM {table} d2 "
            "WHERE (pgml.embed(%s, d2.body))[1] > 0 AND d2.i = d.i)"
        )
    assert "correlated subquery" in str(raised.value)
    if isinstance(raised.value, psycopg.Error):
        assert raised.value.sqlstate == "0A000"


@contextlib.contextmanager
def writer(dsn: str, table: str) -> Iterator[list[int]]:
    """Another session inserting and deleting rows of ``table`` in a loop, committing
    each time, while the block runs; yields the count of its transactions."""
    stop = threading.Event()
    done: list[int] = [0]

    def loop() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                n += 1
                key = ROWS + 1 + n % 50
                conn.execute(
                    f"INSERT INTO {table} (i, body) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    [key, body(key)],
                )
                conn.execute(f"DELETE FROM {table} WHERE i = %s", [ROWS + 1 + (n + 25) % 50])
                done[0] += 1

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        time.sleep(0.2)
        yield done
    finally:
        stop.set()
        thread.join(10)


def test_concurrent_writer_during_a_read(
    pgml_proxy: ProxyProcess, table: str, direct_dsn: str
) -> None:
    with client(pgml_proxy.dsn()) as conn, writer(direct_dsn, table) as done:
        answer = client_answer(conn, f"SELECT i, pgml.embed('{MODEL}', body) FROM {table}")
    assert done[0] > 0
    assert len(answer.rows) >= ROWS
    each_matches(answer.rows)


def test_concurrent_writer_during_an_update(
    pgml_proxy: ProxyProcess, table: str, direct_dsn: str, direct: psycopg.Connection[Any]
) -> None:
    with client(pgml_proxy.dsn()) as conn, writer(direct_dsn, table) as done:
        answer = client_answer(
            conn, f"UPDATE {table} SET e = pgml.embed('{MODEL}', body) WHERE i % 3 = 0"
        )
    assert done[0] > 0
    updated = int(answer.tag.split()[1])
    rows = stored(direct, f"SELECT i, e FROM {table} WHERE e IS NOT NULL ORDER BY i")
    # The writer may have deleted some of its own rows after the update committed.
    assert [i for i, _ in rows if i <= ROWS] == [i for i in range(1, ROWS + 1) if i % 3 == 0]
    assert ROWS // 3 <= len(rows) <= updated
    assert all(i % 3 == 0 for i, _ in rows)
    each_matches(rows)
