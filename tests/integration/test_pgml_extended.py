"""pgml calls through the extended query protocol: psycopg 3 (bound parameters, binary
formats, prepared statements, server-side cursors, pipelines, transactions, cancel),
asyncpg (prepared statements, portals with a row limit, executemany) and SQLAlchemy 2.

Embeddings are compared with sentence-transformers' own; every column name, type OID,
command tag and transaction state is what PostgreSQL itself would give.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from typing import Any, TypeVar

import asyncpg
import psycopg
import pytest
from psycopg import errors
from psycopg.pq import TransactionStatus
from sqlalchemy import String, create_engine, func, literal, select
from sqlalchemy import text as sql_text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import proxy as package
from tests.integration._pgml import MODEL, unique
from tests.integration._pgml import start_proxy as shared_proxy
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

pytestmark = pytest.mark.timeout(120)

UNKNOWN_MODEL = "no-such-org/no-such-model"
DIMENSIONS = 384
TOLERANCE = 1e-5
REAL_ARRAY_OID = 1021
TEXT_OID = 25
INT4_OID = 23
BATCH_SIZE = 5
ANSWER_WITHIN = 10.0
"""Seconds a warm proxy may take for a few statements here; a hang fails the test then."""
MANY_WITHIN = 30.0
"""The same for tests that run dozens of statements."""

DOC_COUNT = 12
PHRASES = [
    "hello world",
    "A quick brown fox jumps over the lazy dog.",
    "It's a 'quoted' text; DROP TABLE x; --",
    "héllo wörld, ünïcode ☃",
    "between the plain statements",
    "inside a pipeline",
    *(f"phrase number {i}" for i in range(12)),
]
T = TypeVar("T")


def doc_body(i: int) -> str | None:
    """Every fourth row has no body; the others are all different."""
    return None if i % 4 == 0 else f"document {i} is about {('cats', 'dogs', 'birds')[i % 3]}"


DOC_BODIES = {i: doc_body(i) for i in range(1, DOC_COUNT + 1)}


# --- reference embeddings -----------------------------------------------------------


class Reference:
    """sentence-transformers' embeddings of every text these tests use, computed once."""

    def __init__(self, texts: Sequence[str]) -> None:
        from sentence_transformers import SentenceTransformer

        from handlers.models import ModelResolver

        model = SentenceTransformer(str(ModelResolver().resolve(MODEL)), device="cpu")
        texts = list(dict.fromkeys(texts))
        vectors = model.encode(texts, normalize_embeddings=True)
        self.vectors = {t: [float(v) for v in vec] for t, vec in zip(texts, vectors, strict=True)}

    def check(self, got: Any, text: str | None) -> None:
        """``got`` is the embedding of ``text`` (NULL for a NULL text), within 1e-5."""
        if text is None:
            assert got is None, f"expected NULL, got {str(got)[:60]}"
            return
        expected = self.vectors[text]
        assert got is not None, f"expected the embedding of {text!r}, got NULL"
        assert len(got) == len(expected) == DIMENSIONS
        worst = max(abs(float(a) - b) for a, b in zip(got, expected, strict=True))
        assert worst < TOLERANCE, f"{text!r}: differs from sentence-transformers by {worst}"


@pytest.fixture(scope="module")
def reference() -> Reference:
    bodies = [b for b in DOC_BODIES.values() if b is not None]
    return Reference([*PHRASES, *bodies])


# --- a proxy, tables and connections --------------------------------------------------


def start_proxy(cluster: PostgresCluster, batch_size: int) -> ProxyProcess:
    """The shared test proxy, with the model already loaded."""
    process = shared_proxy(cluster, batch_size)
    with psycopg.connect(process.dsn(), autocommit=True, connect_timeout=10) as conn:
        conn.execute("SELECT pgml.embed(%s, %s)", [MODEL, "load the model"])
    return process


@pytest.fixture(scope="module")
def pgml_proxy(cluster: PostgresCluster) -> Iterator[ProxyProcess]:
    """Batches of 5 rows, so that a dozen rows take several model calls."""
    process = start_proxy(cluster, BATCH_SIZE)
    yield process
    process.stop()


@pytest.fixture
def dsn(pgml_proxy: ProxyProcess) -> str:
    return pgml_proxy.dsn()


@pytest.fixture
def docs(cluster: PostgresCluster, scratch: Callable[[str], str]) -> str:
    """``(id int, body text, emb real[])`` with DOC_COUNT rows, every fourth body NULL."""
    name = scratch("docs")
    values = ", ".join(f"({i}, {'NULL' if b is None else repr(b)})" for i, b in DOC_BODIES.items())
    cluster.psql(
        f"CREATE TABLE {name} (id int PRIMARY KEY, body text, emb real[]); "
        f"INSERT INTO {name} (id, body) VALUES {values}"
    )
    return name


@pytest.fixture
def direct(cluster: PostgresCluster) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as connection:
        yield connection


@contextmanager
def answered_within(
    conn: psycopg.Connection[Any], seconds: float = ANSWER_WITHIN
) -> Iterator[None]:
    """Fail instead of hanging when the proxy does not answer: the socket is shut down."""
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        with suppress(OSError):
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    timer = threading.Timer(seconds, expire)
    timer.start()
    try:
        yield
    except psycopg.OperationalError:
        if fired.is_set():
            pytest.fail(f"the proxy sent no answer within {seconds} s")
        raise
    finally:
        timer.cancel()
    if fired.is_set():
        pytest.fail(f"the proxy sent no answer within {seconds} s")


def temp_pgml_tables(conn: psycopg.Connection[Any]) -> int:
    """The proxy's helper tables left in this session's temporary schema."""
    row = conn.execute(
        "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema() "
        r"AND relname LIKE '\_\_pgml%'"
    ).fetchone()
    assert row is not None
    return int(row[0])


def columns(cur: psycopg.Cursor[Any]) -> list[tuple[str, int]]:
    assert cur.description is not None
    return [(d.name, d.type_code) for d in cur.description]


# --- psycopg 3: bound parameters --------------------------------------------------------


@pytest.mark.parametrize("text", PHRASES[:4])
def test_psycopg_literal_call_with_parameters(
    conn: psycopg.Connection[Any], reference: Reference, text: str
) -> None:
    with answered_within(conn):
        cur = conn.execute("SELECT pgml.embed(%s, %s) AS e", [MODEL, text])
        assert columns(cur) == [("e", REAL_ARRAY_OID)]
        assert (cur.statusmessage, cur.rowcount) == ("SELECT 1", 1)
        (row,) = cur.fetchall()
    reference.check(row[0], text)
    assert conn.info.transaction_status == TransactionStatus.IDLE


@pytest.mark.parametrize(
    ("sql", "column"),
    [
        ("SELECT pgml.embed(%s, %s)", "embed"),
        ("SELECT pgml.embed(%s,%s) AS e", "e"),
        ("SELECT pgml.embed(transformer => %s, text => %s) AS e", "e"),
        ("select PGML.EMBED(%s, %s)::real[] as e", "e"),
        ("SELECT (pgml.embed(%s, %s)) AS e", "e"),
    ],
    ids=["no-alias", "no-space-between-parameters", "named-arguments", "cast", "parenthesized"],
)
def test_psycopg_literal_call_shapes(
    conn: psycopg.Connection[Any], reference: Reference, sql: str, column: str
) -> None:
    with answered_within(conn):
        cur = conn.execute(sql, [MODEL, PHRASES[1]])
        assert columns(cur) == [(column, REAL_ARRAY_OID)]
        assert (cur.statusmessage, cur.rowcount) == ("SELECT 1", 1)
        (row,) = cur.fetchall()
    reference.check(row[0], PHRASES[1])


def test_psycopg_version_and_mixed_columns(
    conn: psycopg.Connection[Any], reference: Reference
) -> None:
    with answered_within(conn):
        cur = conn.execute(
            "SELECT %s::int AS n, pgml.version() AS v, pgml.embed(%s, %s) AS e, %s AS t",
            [7, MODEL, "hello world", "after"],
        )
        assert columns(cur) == [
            ("n", INT4_OID),
            ("v", TEXT_OID),
            ("e", REAL_ARRAY_OID),
            ("t", TEXT_OID),
        ]
        ((n, version, embedding, tail),) = cur.fetchall()
    assert (n, version, tail) == (7, package.__version__, "after")
    reference.check(embedding, "hello world")


def test_psycopg_column_arguments_with_parameters(
    conn: psycopg.Connection[Any], docs: str, reference: Reference
) -> None:
    """Eight rows (more than the batch size), two with NULL bodies, cut by WHERE,
    ORDER BY and LIMIT that all take parameters."""
    with answered_within(conn):
        cur = conn.execute(
            f"SELECT id, body, pgml.embed(%s, body) AS e FROM {docs} "
            "WHERE id > %s ORDER BY id DESC LIMIT %s",
            [MODEL, 1, 8],
        )
        assert columns(cur) == [("id", INT4_OID), ("body", TEXT_OID), ("e", REAL_ARRAY_OID)]
        rows = cur.fetchall()
        assert cur.statusmessage == "SELECT 8"
    assert [r[0] for r in rows] == list(range(12, 4, -1))
    assert sum(r[1] is None for r in rows) == 2
    for _, body, embedding in rows:
        reference.check(embedding, body)
    assert temp_pgml_tables(conn) == 0


def test_psycopg_column_arguments_in_where_and_join(
    conn: psycopg.Connection[Any], docs: str, reference: Reference
) -> None:
    with answered_within(conn):
        rows = conn.execute(
            f"SELECT d.id, pgml.embed(%s, d.body || %s) AS e FROM {docs} AS d "
            f"JOIN {docs} AS o ON o.id = d.id + 1 WHERE d.body IS NOT NULL AND o.id <= %s "
            "ORDER BY d.id",
            [MODEL, "", 8],
        ).fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 5, 6, 7]
    for doc_id, embedding in rows:
        reference.check(embedding, DOC_BODIES[doc_id])


def test_psycopg_binary_results(
    conn: psycopg.Connection[Any], docs: str, reference: Reference
) -> None:
    with answered_within(conn), conn.cursor(binary=True) as cur:
        cur.execute("SELECT pgml.embed(%s, %s) AS e, 1 AS one", [MODEL, "hello world"])
        assert columns(cur) == [("e", REAL_ARRAY_OID), ("one", INT4_OID)]
        assert cur.pgresult is not None
        assert [cur.pgresult.fformat(i) for i in range(2)] == [1, 1]
        ((embedding, one),) = cur.fetchall()
        reference.check(embedding, "hello world")
        assert one == 1

        cur.execute(
            f"SELECT id, pgml.embed(%s, body) AS e FROM {docs} WHERE id <= %s ORDER BY id",
            [MODEL, 9],
        )
        assert cur.pgresult is not None
        assert [cur.pgresult.fformat(i) for i in range(2)] == [1, 1]
        rows = cur.fetchall()
    assert [r[0] for r in rows] == list(range(1, 10))
    for doc_id, embedding in rows:
        reference.check(embedding, DOC_BODIES[doc_id])


def test_psycopg_binary_parameters(
    conn: psycopg.Connection[Any], docs: str, reference: Reference
) -> None:
    with answered_within(conn):
        cur = conn.execute("SELECT pgml.embed(%b, %b) AS e", [MODEL, PHRASES[3]])
        reference.check(cur.fetchone()[0], PHRASES[3])  # type: ignore[index]

        cur = conn.execute(
            f"SELECT id, pgml.embed(%b, body) AS e FROM {docs} WHERE id BETWEEN %b AND %b "
            "ORDER BY id",
            [MODEL, 3, 10],
        )
        rows = cur.fetchall()
        assert [r[0] for r in rows] == list(range(3, 11))
        for doc_id, embedding in rows:
            reference.check(embedding, DOC_BODIES[doc_id])

        cur = conn.cursor()
        cur.execute("SELECT pgml.embed(%b, %b) AS e", [MODEL, "hello world"], binary=True)
        assert cur.pgresult is not None and cur.pgresult.fformat(0) == 1
        reference.check(cur.fetchone()[0], "hello world")  # type: ignore[index]


def test_psycopg_prepared_statements(
    conn: psycopg.Connection[Any], docs: str, reference: Reference
) -> None:
    """``prepare=True`` from the first execution, and psycopg's own automatic preparation
    (after five executions of one query), each executed with changing parameters."""
    texts = PHRASES[6:]
    with answered_within(conn, MANY_WITHIN):
        for text in texts:
            cur = conn.execute("SELECT pgml.embed(%s, %s) AS e", [MODEL, text], prepare=True)
            assert columns(cur) == [("e", REAL_ARRAY_OID)]
            reference.check(cur.fetchone()[0], text)  # type: ignore[index]
        for i in range(10):
            cur = conn.execute(
                f"SELECT id, pgml.embed(%s, body) AS e FROM {docs} WHERE id >= %s ORDER BY id",
                [MODEL, i + 1],
            )
            assert cur.statusmessage == f"SELECT {DOC_COUNT - i}"
            rows = cur.fetchall()
            assert [r[0] for r in rows] == list(range(i + 1, DOC_COUNT + 1))
            for doc_id, embedding in rows:
                reference.check(embedding, DOC_BODIES[doc_id])
        for i in range(10):
            cur = conn.execute("SELECT %s::int AS n, pgml.embed(%s, %s) AS e", [i, MODEL, texts[i]])
            (row,) = cur.fetchall()
            assert row[0] == i
            reference.check(row[1], texts[i])
        assert temp_pgml_tables(conn) == 0


def test_psycopg_insert_update_create_table_as(
    conn: psycopg.Connection[Any],
    direct: psycopg.Connection[Any],
    docs: str,
    scratch: Callable[[str], str],
    reference: Reference,
) -> None:
    out = scratch("out")
    created = scratch("ctas")
    direct.execute(f"CREATE TABLE {out} (id int, e real[])")
    with answered_within(conn):
        cur = conn.execute(
            f"INSERT INTO {out} SELECT id, pgml.embed(%s, body) FROM {docs} WHERE id <= %s",
            [MODEL, 7],
        )
        assert (cur.statusmessage, cur.rowcount) == ("INSERT 0 7", 7)

        cur = conn.execute(
            f"UPDATE {docs} SET emb = pgml.embed(%s, body) WHERE id < %s", [MODEL, 10]
        )
        assert (cur.statusmessage, cur.rowcount) == ("UPDATE 9", 9)

        cur = conn.execute(
            f"CREATE TABLE {created} AS SELECT id, pgml.embed(%s, body) AS e FROM {docs} "
            "WHERE id > %s",
            [MODEL, 5],
        )
        assert (cur.statusmessage, cur.rowcount) == ("SELECT 7", 7)

    inserted = direct.execute(f"SELECT id, e FROM {out} ORDER BY id").fetchall()
    assert [r[0] for r in inserted] == list(range(1, 8))
    for doc_id, embedding in inserted:
        reference.check(embedding, DOC_BODIES[doc_id])

    updated = direct.execute(f"SELECT id, emb FROM {docs} ORDER BY id").fetchall()
    for doc_id, embedding in updated:
        reference.check(embedding, DOC_BODIES[doc_id] if doc_id < 10 else None)

    kind = direct.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attname = 'e'",
        [created],
    ).fetchone()
    assert kind == ("real[]",)
    stored = direct.execute(f"SELECT id, e FROM {created} ORDER BY id").fetchall()
    assert [r[0] for r in stored] == list(range(6, 13))
    for doc_id, embedding in stored:
        reference.check(embedding, DOC_BODIES[doc_id])


@pytest.mark.parametrize("withhold", [False, True], ids=["in-transaction", "with-hold"])
def test_psycopg_server_side_cursor(
    conn: psycopg.Connection[Any], docs: str, reference: Reference, withhold: bool
) -> None:
    """A named cursor: ``DECLARE ... CURSOR FOR`` with bound parameters, then FETCHes of
    ``itersize`` rows; a holdable one is declared outside a transaction block and read
    after its implicit transaction has committed."""
    block = nullcontext() if withhold else conn.transaction()
    with answered_within(conn), block:
        cur = conn.cursor(name=unique("cur"), withhold=withhold)
        cur.itersize = 3
        cur.execute(
            f"SELECT id, pgml.embed(%s, body) AS e FROM {docs} WHERE id <= %s ORDER BY id",
            [MODEL, 11],
        )
        assert columns(cur) == [("id", INT4_OID), ("e", REAL_ARRAY_OID)]
        rows = list(cur)
        cur.close()
    assert [r[0] for r in rows] == list(range(1, 12))
    for doc_id, embedding in rows:
        reference.check(embedding, DOC_BODIES[doc_id])
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert temp_pgml_tables(conn) == 0
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_psycopg_server_side_cursors_open_together(
    conn: psycopg.Connection[Any], docs: str, reference: Reference
) -> None:
    """Two named cursors over pgml queries open in one transaction, read in turns, with
    other pgml statements run while they are open."""
    query = f"SELECT id, pgml.embed(%s, body) AS e FROM {docs} WHERE id <= %s ORDER BY id"
    with answered_within(conn), conn.transaction():
        first = conn.cursor(name=unique("first"))
        first.execute(query, [MODEL, 6])
        second = conn.cursor(name=unique("second"))
        second.execute(query, [MODEL, 9])
        rows = first.fetchmany(2) + second.fetchmany(3)
        between = conn.execute(
            f"SELECT id, pgml.embed(%s, body) AS e FROM {docs} WHERE id > %s ORDER BY id",
            [MODEL, 10],
        ).fetchall()
        rows += first.fetchall() + second.fetchall()
        first.close()
        second.close()
    assert [r[0] for r in rows] == [1, 2, 1, 2, 3, 3, 4, 5, 6, 4, 5, 6, 7, 8, 9]
    assert [r[0] for r in between] == [11, 12]
    for doc_id, embedding in rows + between:
        reference.check(embedding, DOC_BODIES[doc_id])
    assert temp_pgml_tables(conn) == 0


# --- psycopg 3: pipelines ---------------------------------------------------------------


def test_psycopg_pipeline_mixes_plain_and_pgml(
    conn: psycopg.Connection[Any], docs: str, reference: Reference
) -> None:
    with answered_within(conn):
        with conn.pipeline():
            inserted = conn.execute(
                f"INSERT INTO {docs} (id, body) VALUES (%s, %s)", [100, PHRASES[5]]
            )
            literal = conn.execute("SELECT pgml.embed(%s, %s) AS e", [MODEL, PHRASES[4]])
            per_row = conn.execute(
                f"SELECT id, pgml.embed(%s, body) AS e FROM {docs} WHERE id >= %s ORDER BY id",
                [MODEL, 10],
            )
            counted = conn.execute(f"SELECT count(*) FROM {docs}")
            version = conn.execute("SELECT pgml.version() AS v")
        assert inserted.statusmessage == "INSERT 0 1"
        reference.check(literal.fetchone()[0], PHRASES[4])  # type: ignore[index]
        rows = per_row.fetchall()
        assert [r[0] for r in rows] == [10, 11, 12, 100]
        for doc_id, embedding in rows:
            reference.check(embedding, DOC_BODIES.get(doc_id, PHRASES[5]))
        assert counted.fetchone() == (DOC_COUNT + 1,)
        assert version.fetchone() == (package.__version__,)
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.execute("SELECT 42").fetchone() == (42,)


def test_psycopg_pipeline_results_fetched_inside_the_block(
    conn: psycopg.Connection[Any], docs: str, reference: Reference
) -> None:
    """Fetching inside the block makes psycopg send a Flush, not a Sync, in the middle of
    the batch; the next statements still belong to it."""
    with answered_within(conn), conn.pipeline():
        literal = conn.execute("SELECT pgml.embed(%s, %s) AS e", [MODEL, PHRASES[5]])
        reference.check(literal.fetchone()[0], PHRASES[5])  # type: ignore[index]
        inserted = conn.execute(f"INSERT INTO {docs} (id, body) VALUES (%s, %s)", [200, PHRASES[4]])
        per_row = conn.execute(
            f"SELECT id, pgml.embed(%s, body) AS e FROM {docs} WHERE id > %s ORDER BY id",
            [MODEL, 10],
        )
        rows = per_row.fetchall()
        assert [r[0] for r in rows] == [11, 12, 200]
        for doc_id, embedding in rows:
            reference.check(embedding, DOC_BODIES.get(doc_id, PHRASES[4]))
        assert conn.execute("SELECT count(*) FROM " + docs).fetchone() == (DOC_COUNT + 1,)
    assert inserted.statusmessage == "INSERT 0 1"
    assert conn.info.transaction_status == TransactionStatus.IDLE


def test_psycopg_pipeline_plain_error_skips_the_rest(
    conn: psycopg.Connection[Any],
    direct: psycopg.Connection[Any],
    docs: str,
    scratch: Callable[[str], str],
    reference: Reference,
) -> None:
    """A division by zero after a pgml statement: nothing after it runs, the implicit
    transaction is rolled back, and the connection is usable afterwards."""
    out = scratch("out")
    direct.execute(f"CREATE TABLE {out} (id int)")
    cursors: list[psycopg.Cursor[Any]] = []
    with answered_within(conn):
        with pytest.raises(errors.DivisionByZero), conn.pipeline():
            cursors.append(conn.execute("SELECT pgml.embed(%s, %s) AS e", [MODEL, PHRASES[5]]))
            cursors.append(conn.execute(f"INSERT INTO {out} VALUES (%s)", [1]))
            cursors.append(conn.execute("SELECT 1 / %s", [0]))
            cursors.append(conn.execute(f"INSERT INTO {out} VALUES (%s)", [2]))
            cursors.append(conn.execute("SELECT pgml.embed(%s, %s) AS e", [MODEL, PHRASES[4]]))
        reference.check(cursors[0].fetchone()[0], PHRASES[5])  # type: ignore[index]
        assert cursors[1].statusmessage == "INSERT 0 1"
        # psycopg raises at whichever later execute (or the sync) first reads the error:
        # what was sent after the error, if anything, did not run
        assert all(c.statusmessage is None for c in cursors[3:])
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert direct.execute(f"SELECT count(*) FROM {out}").fetchone() == (0,)
        cur = conn.execute("SELECT pgml.embed(%s, %s) AS e", [MODEL, PHRASES[4]])
        reference.check(cur.fetchone()[0], PHRASES[4])  # type: ignore[index]
        assert temp_pgml_tables(conn) == 0


def test_psycopg_pipeline_pgml_error_skips_the_rest(
    conn: psycopg.Connection[Any],
    direct: psycopg.Connection[Any],
    docs: str,
    scratch: Callable[[str], str],
    reference: Reference,
) -> None:
    out = scratch("out")
    direct.execute(f"CREATE TABLE {out} (id int)")
    cursors: list[psycopg.Cursor[Any]] = []
    with answered_within(conn):
        with pytest.raises(errors.UndefinedObject) as raised, conn.pipeline():
            cursors.append(
                conn.execute(
                    f"SELECT id, pgml.embed(%s, body) AS e FROM {docs} WHERE id < %s ORDER BY id",
                    [MODEL, 3],
                )
            )
            cursors.append(conn.execute(f"INSERT INTO {out} VALUES (%s)", [1]))
            cursors.append(conn.execute("SELECT pgml.embed(%s, %s) AS e", [UNKNOWN_MODEL, "hello"]))
            cursors.append(conn.execute(f"INSERT INTO {out} VALUES (%s)", [2]))
            cursors.append(conn.execute("SELECT pgml.embed(%s, %s) AS e", [MODEL, "hello"]))
        assert raised.value.sqlstate == "42704"
        assert UNKNOWN_MODEL in str(raised.value)
        assert [r[0] for r in cursors[0].fetchall()] == [1, 2]
        assert cursors[1].statusmessage == "INSERT 0 1"
        # psycopg raises at whichever later execute (or the sync) first reads the error:
        # what was sent after the error, if anything, did not run
        assert all(c.statusmessage is None for c in cursors[3:])
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert direct.execute(f"SELECT count(*) FROM {out}").fetchone() == (0,)
        cur = conn.execute("SELECT pgml.embed(%s, %s) AS e", [MODEL, "hello world"])
        reference.check(cur.fetchone()[0], "hello world")  # type: ignore[index]
        assert temp_pgml_tables(conn) == 0


# --- psycopg 3: transactions ------------------------------------------------------------


def test_psycopg_failing_call_rolls_back_transaction_block(
    conn: psycopg.Connection[Any],
    direct: psycopg.Connection[Any],
    scratch: Callable[[str], str],
    reference: Reference,
) -> None:
    out = scratch("out")
    direct.execute(f"CREATE TABLE {out} (id int)")
    with answered_within(conn):
        with pytest.raises(errors.UndefinedObject), conn.transaction():
            conn.execute(f"INSERT INTO {out} VALUES (%s)", [1])
            conn.execute("SELECT pgml.embed(%s, %s)", [UNKNOWN_MODEL, "x"])
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert direct.execute(f"SELECT count(*) FROM {out}").fetchone() == (0,)

        # A nested block is a savepoint: only its own work is undone.
        with conn.transaction():
            conn.execute(f"INSERT INTO {out} VALUES (%s)", [1])
            with pytest.raises(errors.UndefinedObject), conn.transaction():
                conn.execute(f"INSERT INTO {out} VALUES (%s)", [2])
                conn.execute("SELECT pgml.embed(%s, %s)", [UNKNOWN_MODEL, "x"])
            cur = conn.execute("SELECT pgml.embed(%s, %s) AS e", [MODEL, "hello world"])
            reference.check(cur.fetchone()[0], "hello world")  # type: ignore[index]
            conn.execute(f"INSERT INTO {out} VALUES (%s)", [3])
        ids = direct.execute(f"SELECT id FROM {out} ORDER BY id").fetchall()
        assert ids == [(1,), (3,)]


def test_psycopg_failed_call_aborts_explicit_transaction(
    dsn: str,
    direct: psycopg.Connection[Any],
    scratch: Callable[[str], str],
    reference: Reference,
) -> None:
    out = scratch("out")
    direct.execute(f"CREATE TABLE {out} (id int)")
    with psycopg.connect(dsn, connect_timeout=10) as conn, answered_within(conn):
        conn.execute(f"INSERT INTO {out} VALUES (%s)", [1])
        with pytest.raises(errors.UndefinedObject):
            conn.execute("SELECT pgml.embed(%s, %s)", [UNKNOWN_MODEL, "x"])
        assert conn.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        assert conn.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT pgml.embed(%s, %s)", [MODEL, "hello world"])
        assert conn.info.transaction_status == TransactionStatus.INERROR
        conn.rollback()
        assert conn.info.transaction_status == TransactionStatus.IDLE
        cur = conn.execute("SELECT pgml.embed(%s, %s) AS e", [MODEL, "hello world"])
        reference.check(cur.fetchone()[0], "hello world")  # type: ignore[index]
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        conn.commit()
    assert direct.execute(f"SELECT count(*) FROM {out}").fetchone() == (0,)


def test_psycopg_reads_see_uncommitted_rows(
    conn: psycopg.Connection[Any],
    direct: psycopg.Connection[Any],
    scratch: Callable[[str], str],
    reference: Reference,
) -> None:
    table = scratch("fresh")
    direct.execute(f"CREATE TABLE {table} (id int, body text)")
    texts = PHRASES[6:13]
    with answered_within(conn, MANY_WITHIN), conn.transaction(force_rollback=True):
        for i, text in enumerate(texts):
            conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", [i, text])
        conn.execute("CREATE TEMP TABLE pgml_extended_tmp (id int, body text)")
        conn.execute("INSERT INTO pgml_extended_tmp VALUES (%s, %s), (%s, NULL)", [1, texts[0], 2])
        assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)

        rows = conn.execute(
            f"SELECT id, pgml.embed(%s, body) AS e FROM {table} WHERE id >= %s ORDER BY id",
            [MODEL, 0],
        ).fetchall()
        assert [r[0] for r in rows] == list(range(len(texts)))
        for (_, embedding), text in zip(rows, texts, strict=True):
            reference.check(embedding, text)

        temp = conn.execute(
            "SELECT id, pgml.embed(%s, body) AS e FROM pgml_extended_tmp ORDER BY id", [MODEL]
        ).fetchall()
        assert [r[0] for r in temp] == [1, 2]
        reference.check(temp[0][1], texts[0])
        reference.check(temp[1][1], None)
        assert conn.info.transaction_status == TransactionStatus.INTRANS
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


# --- psycopg 3: cancel ------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_proxy(cluster: PostgresCluster) -> Iterator[ProxyProcess]:
    process = start_proxy(cluster, 8)
    yield process
    process.stop()


def test_psycopg_cancel_long_statement(
    slow_proxy: ProxyProcess, cluster: PostgresCluster, scratch: Callable[[str], str]
) -> None:
    """2000 rows in batches of 8: a cancel stops it between batches, within seconds."""
    big = scratch("big")
    cluster.psql(
        f"CREATE TABLE {big} AS SELECT g AS id, 'row number ' || g || ' of a long table, "
        "written to take the model a while' AS body FROM generate_series(1, 2000) AS g"
    )
    with psycopg.connect(slow_proxy.dsn(), autocommit=True, connect_timeout=10) as conn:
        cancelled_at: list[float] = []

        def cancel() -> None:
            cancelled_at.append(time.monotonic())
            conn.cancel()

        timer = threading.Timer(1.0, cancel)
        with answered_within(conn, 30):
            timer.start()
            try:
                with pytest.raises(errors.QueryCanceled) as raised:
                    conn.execute(f"SELECT id, pgml.embed(%s, body) FROM {big}", [MODEL])
            finally:
                timer.cancel()
            assert cancelled_at, "the statement ended before the cancel was sent"
            assert raised.value.sqlstate == "57014"
            assert time.monotonic() - cancelled_at[0] < 5.0
            assert conn.info.transaction_status == TransactionStatus.IDLE
            assert conn.execute("SELECT 1").fetchone() == (1,)
            cur = conn.execute(f"SELECT pgml.embed(%s, body) FROM {big} WHERE id = %s", [MODEL, 1])
            assert len(cur.fetchone()[0]) == DIMENSIONS  # type: ignore[index]
            assert temp_pgml_tables(conn) == 0


# --- the differential check -------------------------------------------------------------

PLAIN_BEFORE: list[tuple[str, list[Any] | None]] = [
    ("CREATE TEMP TABLE diff_t (id int PRIMARY KEY, v text, n numeric)", None),
    (
        "INSERT INTO diff_t VALUES (%s, %s, %s), (%s, %s, %s) RETURNING id, v",
        [1, "a", 1.5, 2, "b", None],
    ),
    ("SELECT id, v || %s AS w, n * 2 AS n2 FROM diff_t ORDER BY id", ["!"]),
    ("UPDATE diff_t SET v = upper(v) WHERE id = %s", [1]),
]
PLAIN_AFTER: list[tuple[str, list[Any] | None]] = [
    ("SELECT * FROM diff_t ORDER BY id", None),
    ("DELETE FROM diff_t WHERE id = %s", [2]),
    ("SELECT count(*) AS c, current_setting('TimeZone') IS NOT NULL AS tz FROM diff_t", None),
    ("SELECT %s::int + 1 AS plus, %s::text AS t, NULL::int AS nothing, 'x' AS lit", [41, "é"]),
    ("SELECT id, v FROM diff_t WHERE id = ANY(%s) ORDER BY id", [[1, 2, 3]]),
]


def outcome(cur: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    description = [(d.name, d.type_code) for d in cur.description or []]
    rows = cur.fetchall() if cur.description is not None else None
    return (description, rows, cur.statusmessage, cur.rowcount)


def run_pipeline(
    conn: psycopg.Connection[Any], statements: Sequence[tuple[str, list[Any] | None]]
) -> list[psycopg.Cursor[Any]]:
    with conn.pipeline():
        return [conn.execute(sql, params) for sql, params in statements]


@pytest.mark.parametrize("where", ["between", "first", "last"])
def test_differential_plain_statements_around_pgml_in_one_pipeline(
    conn: psycopg.Connection[Any],
    direct: psycopg.Connection[Any],
    reference: Reference,
    where: str,
) -> None:
    """The plain statements give exactly what PostgreSQL gives for them alone."""
    pgml = ("SELECT pgml.embed(%s, %s) AS e", [MODEL, PHRASES[4]])
    plain = PLAIN_BEFORE + PLAIN_AFTER
    if where == "between":
        statements = [*PLAIN_BEFORE, pgml, *PLAIN_AFTER]
    elif where == "first":
        statements = [pgml, *plain]
    else:
        statements = [*plain, pgml]
    position = statements.index(pgml)

    expected = [outcome(c) for c in run_pipeline(direct, plain)]
    with answered_within(conn):
        cursors = run_pipeline(conn, statements)
        got = [outcome(c) for i, c in enumerate(cursors) if i != position]
        assert columns(cursors[position]) == [("e", REAL_ARRAY_OID)]
        reference.check(cursors[position].fetchone()[0], PHRASES[4])  # type: ignore[index]
        assert conn.info.transaction_status == direct.info.transaction_status
    for index, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        assert mine == theirs, f"statement {index}: {plain[index][0]}"


# --- asyncpg ----------------------------------------------------------------------------


def run_async(
    dsn: str,
    work: Callable[[asyncpg.Connection], Awaitable[T]],
    seconds: float = ANSWER_WITHIN,
) -> T:
    async def main() -> T:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await within(conn, work(conn), seconds)
        finally:
            if not conn.is_closed():
                await conn.close(timeout=5)

    return asyncio.run(main())


async def within(conn: asyncpg.Connection, work: Awaitable[T], seconds: float = ANSWER_WITHIN) -> T:
    """Fail instead of hanging when the proxy does not answer: the connection is dropped."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        conn.terminate()
        with suppress(BaseException):
            await task
        pytest.fail(f"the proxy sent no answer within {seconds} s")
    return task.result()


def test_asyncpg_fetch_fetchval_fetchrow(dsn: str, docs: str, reference: Reference) -> None:
    async def work(conn: asyncpg.Connection) -> None:
        value = await conn.fetchval("SELECT pgml.embed($1, $2)", MODEL, PHRASES[1])
        reference.check(value, PHRASES[1])

        row = await conn.fetchrow(
            "SELECT $3::int AS n, pgml.embed($1, $2) AS e, pgml.version() AS v",
            MODEL,
            PHRASES[2],
            5,
        )
        assert list(row.keys()) == ["n", "e", "v"]
        assert (row["n"], row["v"]) == (5, package.__version__)
        reference.check(row["e"], PHRASES[2])

        rows = await conn.fetch(
            f"SELECT id, pgml.embed($1, body) AS e FROM {docs} WHERE id > $2 ORDER BY id",
            MODEL,
            2,
        )
        assert [r["id"] for r in rows] == list(range(3, DOC_COUNT + 1))
        for r in rows:
            reference.check(r["e"], DOC_BODIES[r["id"]])
        assert not conn.is_in_transaction()

    run_async(dsn, work)


def test_asyncpg_prepared_statement_many_times(dsn: str, docs: str, reference: Reference) -> None:
    async def work(conn: asyncpg.Connection) -> None:
        stmt = await conn.prepare("SELECT $2::int AS n, pgml.embed($1, $3) AS e")
        assert [(a.name, a.type.oid) for a in stmt.get_attributes()] == [
            ("n", INT4_OID),
            ("e", REAL_ARRAY_OID),
        ]
        assert [t.oid for t in stmt.get_parameters()] == [TEXT_OID, INT4_OID, TEXT_OID]
        for i, text in enumerate(PHRASES[6:]):
            row = await stmt.fetchrow(MODEL, i, text)
            assert row["n"] == i
            reference.check(row["e"], text)

        per_row = await conn.prepare(
            f"SELECT id, pgml.embed($1, body) AS e FROM {docs} WHERE id <= $2 ORDER BY id"
        )
        assert [t.oid for t in per_row.get_parameters()] == [TEXT_OID, INT4_OID]
        for limit in (1, 6, DOC_COUNT):
            rows = await per_row.fetch(MODEL, limit)
            assert [r["id"] for r in rows] == list(range(1, limit + 1))
            for r in rows:
                reference.check(r["e"], DOC_BODIES[r["id"]])

    run_async(dsn, work, MANY_WITHIN)


def test_asyncpg_cursor_with_prefetch(dsn: str, docs: str, reference: Reference) -> None:
    """A portal read a few rows at a time (Execute with a row limit, PortalSuspended),
    each Execute in a batch of its own."""

    async def work(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            stmt = await conn.prepare(
                f"SELECT id, pgml.embed($1, body) AS e FROM {docs} WHERE id <= $2 ORDER BY id"
            )
            rows = [r async for r in stmt.cursor(MODEL, 11, prefetch=3)]
            assert [r["id"] for r in rows] == list(range(1, 12))
            for r in rows:
                reference.check(r["e"], DOC_BODIES[r["id"]])

            cursor = await stmt.cursor(MODEL, DOC_COUNT)
            first = await cursor.fetch(5)
            second = await cursor.fetch(5)
            rest = await cursor.fetch(5)
            assert [r["id"] for r in first + second + rest] == list(range(1, DOC_COUNT + 1))
            for r in first + second + rest:
                reference.check(r["e"], DOC_BODIES[r["id"]])
        leftovers = await conn.fetchval(
            "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema() "
            r"AND relname LIKE '\_\_pgml%'"
        )
        assert leftovers == 0
        assert await conn.fetchval("SELECT 1") == 1

    run_async(dsn, work)


def test_asyncpg_cursor_left_unfinished_when_the_transaction_ends(
    dsn: str, docs: str, reference: Reference
) -> None:
    """A portal read in part: the transaction's end closes it, and the session's next
    statements with pgml calls run as usual."""

    async def work(conn: asyncpg.Connection) -> None:
        query = f"SELECT id, pgml.embed($1, body) AS e FROM {docs} ORDER BY id"
        async with conn.transaction():
            cursor = await (await conn.prepare(query)).cursor(MODEL)
            assert [r["id"] for r in await cursor.fetch(3)] == [1, 2, 3]
        assert not conn.is_in_transaction()
        rows = await conn.fetch(query, MODEL)
        assert [r["id"] for r in rows] == list(range(1, DOC_COUNT + 1))
        for r in rows:
            reference.check(r["e"], DOC_BODIES[r["id"]])
        leftovers = await conn.fetchval(
            "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema() "
            r"AND relname LIKE '\_\_pgml%'"
        )
        assert leftovers == 0

    run_async(dsn, work)


def test_asyncpg_executemany(
    dsn: str,
    direct: psycopg.Connection[Any],
    scratch: Callable[[str], str],
    reference: Reference,
) -> None:
    out = scratch("out")
    direct.execute(f"CREATE TABLE {out} (id int, e real[])")
    texts = PHRASES[6:]

    async def work(conn: asyncpg.Connection) -> None:
        await conn.executemany(
            f"INSERT INTO {out} SELECT $1, pgml.embed($2, $3)",
            [(i, MODEL, text) for i, text in enumerate(texts)],
        )
        assert not conn.is_in_transaction()

    run_async(dsn, work, MANY_WITHIN)
    stored = direct.execute(f"SELECT id, e FROM {out} ORDER BY id").fetchall()
    assert [r[0] for r in stored] == list(range(len(texts)))
    for (_, embedding), text in zip(stored, texts, strict=True):
        reference.check(embedding, text)


def test_asyncpg_errors_and_transactions(
    dsn: str,
    direct: psycopg.Connection[Any],
    scratch: Callable[[str], str],
    reference: Reference,
) -> None:
    out = scratch("out")
    direct.execute(f"CREATE TABLE {out} (id int)")

    async def work(conn: asyncpg.Connection) -> None:
        with pytest.raises(asyncpg.exceptions.UndefinedObjectError) as raised:
            await conn.fetchval("SELECT pgml.embed($1, $2)", UNKNOWN_MODEL, "x")
        assert raised.value.sqlstate == "42704"
        assert not conn.is_in_transaction()
        reference.check(
            await conn.fetchval("SELECT pgml.embed($1, $2)", MODEL, "hello world"), "hello world"
        )

        with pytest.raises(asyncpg.exceptions.UndefinedObjectError):
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {out} VALUES ($1)", 1)
                await conn.fetchval("SELECT pgml.embed($1, $2)", UNKNOWN_MODEL, "x")
        assert not conn.is_in_transaction()
        assert await conn.fetchval(f"SELECT count(*) FROM {out}") == 0

        async with conn.transaction():
            await conn.execute(f"INSERT INTO {out} VALUES ($1)", 2)
            value = await conn.fetchval("SELECT pgml.embed($1, $2)", MODEL, PHRASES[0])
            reference.check(value, PHRASES[0])
        assert await conn.fetchval("SELECT 1") == 1

    run_async(dsn, work, MANY_WITHIN)
    assert direct.execute(f"SELECT id FROM {out}").fetchall() == [(2,)]


# --- SQLAlchemy 2 -----------------------------------------------------------------------


def orm_model(table: str) -> Any:
    class Base(DeclarativeBase):
        pass

    class Doc(Base):
        __tablename__ = table

        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str | None] = mapped_column(String)

    return Doc


def orm_query(doc: Any, below: int) -> Any:
    return (
        select(doc.id, func.pgml.embed(literal(MODEL), doc.body).label("e"))
        .where(doc.id < below)
        .order_by(doc.id)
    )


def test_sqlalchemy_sync_psycopg(pgml_proxy: ProxyProcess, docs: str, reference: Reference) -> None:
    rendered = str(orm_query(orm_model(docs), 9).compile(dialect=postgresql.dialect()))
    assert "pgml.embed(" in rendered
    engine = create_engine(pgml_proxy.dsn().replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as connection:
            result = connection.execute(
                sql_text("SELECT pgml.embed(:m, :t) AS e"), {"m": MODEL, "t": PHRASES[1]}
            )
            assert list(result.keys()) == ["e"]
            reference.check(result.scalar_one(), PHRASES[1])
        doc = orm_model(docs)
        with Session(engine) as session:
            rows = session.execute(orm_query(doc, 9)).all()
        assert [r.id for r in rows] == list(range(1, 9))
        for r in rows:
            reference.check(r.e, DOC_BODIES[r.id])
    finally:
        engine.dispose()


def test_sqlalchemy_async_asyncpg(
    pgml_proxy: ProxyProcess, docs: str, reference: Reference
) -> None:
    doc = orm_model(docs)

    async def main() -> None:
        engine = create_async_engine(
            pgml_proxy.dsn().replace("postgresql://", "postgresql+asyncpg://")
        )
        try:
            async with engine.connect() as connection:
                result = await connection.execute(
                    sql_text("SELECT pgml.embed(:m, :t) AS e"), {"m": MODEL, "t": PHRASES[2]}
                )
                reference.check(result.scalar_one(), PHRASES[2])
            async with AsyncSession(engine) as session:
                rows = (await session.execute(orm_query(doc, 9))).all()
            assert [r.id for r in rows] == list(range(1, 9))
            for r in rows:
                reference.check(r.e, DOC_BODIES[r.id])
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_a_plain_unnamed_statement_replaces_a_pgml_one(conn: psycopg.Connection[Any]) -> None:
    """The unnamed statement of a pgml call, then one that only mentions pgml (a catalog
    query) with another number of parameters: the second is PostgreSQL's own."""
    assert conn.execute("SELECT pgml.version() || %s || %s", ("a", "b")).fetchone()
    found = conn.execute(
        "SELECT count(*) FROM pg_namespace WHERE nspname = %s", ("pgml",)
    ).fetchone()
    assert found is not None and found[0] in (0, 1)
    (total,) = conn.execute("SELECT %s::int + 1 AS pgml_total", (41,)).fetchone() or (None,)
    assert total == 42


def test_load_dataset_with_bound_parameters(conn: psycopg.Connection[Any], tmp_path: Any) -> None:
    """Handler SQL binds its own parameters, not the client's."""
    source = tmp_path / "bound_rows.csv"
    source.write_text("a,b\n1,x\n2,y\n")
    rows = conn.execute(
        'SELECT * FROM pgml.load_dataset(%s, "limit" => %s)', (str(source), 5)
    ).fetchall()
    assert rows == [("bound_rows", 2)]
    assert conn.execute("SELECT count(*) FROM pgml.bound_rows").fetchone() == (2,)
    conn.execute("DROP TABLE pgml.bound_rows")
