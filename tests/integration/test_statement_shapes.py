"""Statements with pgml calls as PostgreSQL sees them: the session keeps nothing of the
proxy's once a statement ends, whatever it did; and a client's own statements of any name
stay the client's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.integration._pgml import (
    MODEL,
    client,
    create_docs,
    pgml_temp_tables,
    start_proxy,
    unique,
    warm_up,
)
from tests.integration._wire import RawClient, error_fields, query
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

MISSING = "no-such-org/no-such-model"


@pytest.fixture(scope="module")
def pgml_proxy(cluster: PostgresCluster) -> Iterator[ProxyProcess]:
    process = start_proxy(cluster, batch_size=7)
    warm_up(process.dsn())
    yield process
    process.stop()


@pytest.fixture
def docs(cluster: PostgresCluster) -> Iterator[str]:
    name = unique("docs")
    create_docs(cluster, name)
    yield name
    cluster.psql(f"DROP TABLE IF EXISTS {name}")


def _objects(conn: psycopg.Connection[Any]) -> tuple[list[str], list[str], int]:
    """The session's prepared statements, cursors and proxy temp relations, less
    psycopg's own (its prepared ``_pg3_*``, the unnamed portal reading them)."""
    statements = conn.execute(
        "SELECT name FROM pg_prepared_statements WHERE name NOT LIKE '\\_pg3\\_%' ORDER BY 1",
        prepare=False,
    ).fetchall()
    cursors = conn.execute(
        "SELECT name FROM pg_cursors WHERE name <> '' ORDER BY 1", prepare=False
    ).fetchall()
    return [r[0] for r in statements], [r[0] for r in cursors], pgml_temp_tables(conn)


def _client_statements(conn: psycopg.Connection[Any]) -> None:
    """Statements of the client's own, named as the proxy's might be."""
    for name in ("__pgml_abort", "__pgml_1", "__pgml_h", "__pgml_final", "__pgml_cursor"):
        conn.execute(f"PREPARE {name} AS SELECT '{name}'::text")


def _still_the_clients(conn: psycopg.Connection[Any]) -> None:
    for name in ("__pgml_abort", "__pgml_1", "__pgml_h", "__pgml_final", "__pgml_cursor"):
        assert conn.execute(f"EXECUTE {name}").fetchall() == [(name,)]


FAILING: list[Callable[[str], tuple[str, tuple[Any, ...] | None]]] = [
    lambda docs: (f"SELECT pgml.embed('{MISSING}', 'x')", None),
    lambda docs: (f"SELECT id, pgml.embed('{MISSING}', body) FROM {docs}", None),
    lambda docs: (f"SELECT id, pgml.embed(%s, body) FROM {docs}", (MISSING,)),
    lambda docs: (f"SELECT id, pgml.embed(%s, body) FROM {docs} WHERE id = %s", (MODEL, "x")),
    lambda docs: (f"SELECT pgml.embed(model, body) FROM {docs} WHERE id = 1 / (id - 3)", None),
]


@pytest.mark.parametrize("failing", range(len(FAILING)))
@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
@pytest.mark.parametrize("in_block", [False, True])
def test_failed_statement_leaves_nothing_and_client_names_stay(
    pgml_proxy: ProxyProcess, docs: str, failing: int, protocol: str, in_block: bool
) -> None:
    sql, params = FAILING[failing](docs)
    if params is None and protocol != "simple":
        params = ()
    factory = psycopg.ClientCursor if protocol == "simple" else psycopg.Cursor
    with psycopg.connect(pgml_proxy.dsn(), autocommit=True, cursor_factory=factory) as conn:
        _client_statements(conn)
        before = _objects(conn)
        if in_block:
            conn.execute("BEGIN")
        with pytest.raises(psycopg.Error):
            conn.execute(sql, params, prepare=protocol == "prepared" or None)
        if in_block:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
            conn.execute("ROLLBACK")
        assert _objects(conn) == before
        _still_the_clients(conn)
        # and the session still evaluates pgml calls
        row = conn.execute(f"SELECT count(pgml.embed(model, body)) FROM {docs}").fetchone()
        assert row is not None and row[0] > 0


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_successful_statement_leaves_nothing(
    pgml_proxy: ProxyProcess, docs: str, protocol: str
) -> None:
    factory = psycopg.ClientCursor if protocol == "simple" else psycopg.Cursor
    with psycopg.connect(pgml_proxy.dsn(), autocommit=True, cursor_factory=factory) as conn:
        _client_statements(conn)
        before = _objects(conn)
        for sql in (
            f"SELECT pgml.embed('{MODEL}', 'x')",
            f"SELECT id, pgml.embed(model, body) FROM {docs} ORDER BY id",
            f"SELECT id FROM {docs} WHERE (pgml.embed(model, body))[1] > 0",
        ):
            conn.execute(sql).fetchall()
            assert _objects(conn) == before
        with conn.transaction():
            conn.execute(f"SELECT id, pgml.embed(model, body) FROM {docs}").fetchall()
            assert _objects(conn)[:2] == before[:2]
        assert _objects(conn) == before
        _still_the_clients(conn)


def test_deallocate_all_after_an_error_leaves_nothing(pgml_proxy: ProxyProcess) -> None:
    with client(pgml_proxy.dsn()) as conn:
        for reset in ("DEALLOCATE ALL", "DISCARD ALL"):
            with pytest.raises(psycopg.Error):
                conn.execute(f"SELECT pgml.embed('{MISSING}', 'x')")
            conn.execute(reset)
            assert _objects(conn) == ([], [], 0)
            with pytest.raises(errors.UndefinedTable):
                conn.execute("SELECT * FROM no_such_table_at_all")
            assert _objects(conn) == ([], [], 0)


# --- every spelling PostgreSQL resolves to the function -----------------------------------

SPELLINGS = ['"pgml"."embed"', '"pgml".embed', 'pgml."embed"', "PGML.EMBED", "Pgml.Embed"]
NOT_PGML = ['"PGML".embed', 'pgml."EMBED"', '"Pgml"."embed"']


@pytest.fixture
def standin(direct_dsn: str) -> Iterator[str]:
    """A schema whose ``embed`` is a VOLATILE SQL function of pgml.embed's signature."""
    schema = unique("standin")
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE FUNCTION {schema}.embed(text, text) RETURNS real[] VOLATILE "
            "LANGUAGE sql AS $$SELECT ARRAY[length($2)]::real[]$$"
        )
        yield schema
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _answer(
    conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] | None = None
) -> tuple[list[str], list[int], list[Any]]:
    cur = conn.execute(sql, params)
    description = cur.description or []
    return [d.name for d in description], [d.type_code for d in description], cur.fetchall()


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_every_spelling_of_the_function_is_evaluated(
    pgml_proxy: ProxyProcess, docs: str, spelling: str, protocol: str
) -> None:
    factory = psycopg.ClientCursor if protocol == "simple" else psycopg.Cursor
    with psycopg.connect(pgml_proxy.dsn(), autocommit=True, cursor_factory=factory) as conn:
        for shape in (
            "SELECT {f}(model, body) FROM {docs} ORDER BY id",
            "SELECT id, {f}('{model}', 'hello') AS e FROM {docs} WHERE id < 4 ORDER BY id",
            "SELECT * FROM {f}('{model}', 'hello')",
            "SELECT * FROM {f}('{model}', 'hello') AS e",
            "SELECT e.v FROM {f}('{model}', 'hello') AS e(v)",
            "SELECT * FROM {f}(%s, %s)",
        ):
            params = (MODEL, "hello") if "%s" in shape else None
            canonical = _answer(conn, shape.format(f="pgml.embed", docs=docs, model=MODEL), params)
            spelled = _answer(conn, shape.format(f=spelling, docs=docs, model=MODEL), params)
            assert spelled == canonical
            assert spelled[2], shape


def test_a_scalar_call_in_from_is_named_as_postgresql_names_it(
    pgml_proxy: ProxyProcess, direct_dsn: str, standin: str
) -> None:
    with (
        psycopg.connect(direct_dsn, autocommit=True) as direct,
        client(pgml_proxy.dsn()) as proxied,
    ):
        for shape in (
            "SELECT * FROM {s}.embed('{model}', 'hello')",
            "SELECT * FROM {s}.embed('{model}', 'hello') AS e",
            "SELECT * FROM {s}.embed('{model}', 'hello') AS e(v)",
            "SELECT embed FROM {s}.embed('{model}', 'hello')",
            "SELECT count(*) FROM {s}.embed('{model}', 'hello'), generate_series(1, 3)",
            "SELECT * FROM {s}.embed('{model}', 'hello') WITH ORDINALITY",
            "SELECT * FROM {s}.embed('{model}', 'hello') with ordinality AS e(v, n)",
            "SELECT e.ordinality, g FROM generate_series(1, 2) AS g, "
            "LATERAL {s}.embed('{model}', 'hello') WITH ORDINALITY AS e ORDER BY g",
        ):
            names, oids, rows = _answer(direct, shape.format(s=standin, model=MODEL))
            got_names, got_oids, got_rows = _answer(proxied, shape.format(s="pgml", model=MODEL))
            assert (got_names, got_oids, len(got_rows)) == (names, oids, len(rows))
            if names == ["count"]:
                assert got_rows == rows
            if "ORDINALITY" in shape.upper():  # the number is the row's, 1 for a scalar
                assert [r[-1] for r in got_rows] == [r[-1] for r in rows]


@pytest.mark.parametrize("spelling", NOT_PGML)
def test_other_spellings_pass_through(
    pgml_proxy: ProxyProcess, direct_dsn: str, spelling: str
) -> None:
    sql = f"SELECT {spelling}('{MODEL}', 'hello')"
    with (
        psycopg.connect(direct_dsn, autocommit=True) as direct,
        pytest.raises(psycopg.Error) as expected,
    ):
        direct.execute(sql)
    with client(pgml_proxy.dsn()) as proxied, pytest.raises(psycopg.Error) as got:
        proxied.execute(sql)
    assert got.value.sqlstate == expected.value.sqlstate
    assert str(got.value) == str(expected.value)


def test_transform_in_from_is_evaluated(pgml_proxy: ProxyProcess) -> None:
    """The task's default model is looked up offline, as in the select list."""
    with client(pgml_proxy.dsn()) as conn:
        for sql in (
            "SELECT pgml.transform('text-classification', inputs => ARRAY['x'])",
            "SELECT * FROM pgml.transform('text-classification', inputs => ARRAY['x'])",
            "SELECT * FROM \"pgml\".\"transform\"('text-classification', inputs => ARRAY['x'])",
        ):
            with pytest.raises(psycopg.Error) as raised:
                conn.execute(sql)
            assert raised.value.sqlstate == "42704", sql


# --- any client encoding -------------------------------------------------------------------

ACCENTED = ["café crème", "naïve façade", "Æsir über Öl", "plain ascii"]


@pytest.fixture
def accented(cluster: PostgresCluster) -> Iterator[str]:
    name = unique("accented")
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int, body text, model text DEFAULT '{MODEL}')")
        for i, body in enumerate(ACCENTED):
            conn.execute(f"INSERT INTO {name} (id, body) VALUES (%s, %s)", (i, body))
    yield name
    cluster.psql(f"DROP TABLE IF EXISTS {name}")


def _embeddings(
    dsn: str, table: str, protocol: str, **options: str
) -> tuple[list[Any], list[Any], list[Any]]:
    factory = psycopg.ClientCursor if protocol == "simple" else psycopg.Cursor
    binary = protocol == "binary"
    with psycopg.connect(dsn, autocommit=True, cursor_factory=factory, **options) as conn:
        per_row = conn.cursor(binary=binary).execute(
            f"SELECT id, body, pgml.embed(model, body) FROM {table} ORDER BY id"
        )
        literal = conn.cursor(binary=binary).execute(
            f"SELECT '{ACCENTED[0]}' AS body, pgml.embed('{MODEL}', '{ACCENTED[1]}')"
        )
        bound = conn.cursor(binary=binary).execute(
            "SELECT pgml.embed(%s, %s) AS e", (MODEL, ACCENTED[2])
        )
        return per_row.fetchall(), literal.fetchall(), bound.fetchall()


@pytest.mark.parametrize("protocol", ["simple", "extended", "binary"])
@pytest.mark.parametrize("how", ["parameter", "options"])
@pytest.mark.parametrize("name", ["LATIN1", "WIN1252", "LATIN9"])
def test_any_client_encoding_reads_and_writes_the_clients_text(
    pgml_proxy: ProxyProcess, accented: str, protocol: str, how: str, name: str
) -> None:
    expected = _embeddings(pgml_proxy.dsn(), accented, protocol)
    if how == "parameter":
        got = _embeddings(pgml_proxy.dsn(), accented, protocol, client_encoding=name)
    else:
        got = _embeddings(
            pgml_proxy.dsn(), accented, protocol, options=f"-c client_encoding={name}"
        )
    assert got == expected
    assert [row[1] for row in got[0]] == ACCENTED


def test_set_client_encoding_in_session(pgml_proxy: ProxyProcess, accented: str) -> None:
    """The encoding changes with SET and RESET, each statement read in the current one."""
    expected = _embeddings(pgml_proxy.dsn(), accented, "simple")[0]
    with client(pgml_proxy.dsn()) as conn:
        for setting in (
            "SET client_encoding = 'LATIN1'",
            "RESET client_encoding",
            "SET NAMES 'WIN1252'",
        ):
            conn.execute(setting)
            rows = conn.execute(
                f"SELECT id, body, pgml.embed(model, body) FROM {accented} ORDER BY id"
            ).fetchall()
            assert rows == expected, setting


def test_an_encoding_python_lacks_refuses_pgml_statements(pgml_proxy: ProxyProcess) -> None:
    """EUC_TW (PostgreSQL converts it to and from UTF8; Python has no codec for it)."""
    name = "EUC_TW"
    raw = RawClient(pgml_proxy.port, timeout=30)
    raw.login()
    raw.send(query(f"SET client_encoding = '{name}'"))
    assert sorted(m for m, _ in raw.read_until_ready()) == ["C", "S", "Z"]
    raw.send(query(f"SELECT pgml.embed('{MODEL}', 'x')"))
    replies = raw.read_until_ready()
    errors = [error_fields(body) for mtype, body in replies if mtype == "E"]
    assert [e["C"] for e in errors] == ["0A000"]
    assert name in errors[0]["M"]
    raw.send(query("SELECT 1"))
    assert [m for m, _ in raw.read_until_ready()] == ["T", "D", "C", "Z"]
    raw.close()


def test_a_failed_statement_in_a_pipeline_leaves_nothing(
    pgml_proxy: ProxyProcess, docs: str
) -> None:
    """Parse, Bind, Execute and Sync of several statements in one write."""
    with psycopg.connect(pgml_proxy.dsn(), autocommit=True) as conn:
        _client_statements(conn)
        before = _objects(conn)
        with pytest.raises(psycopg.Error), conn.pipeline() as pipeline:
            conn.execute(f"SELECT id, pgml.embed(%s, body) FROM {docs}", (MISSING,))
            pipeline.sync()
            conn.execute(f"SELECT id, pgml.embed(%s, body) FROM {docs} WHERE id = %s", (MODEL, "x"))
            conn.execute("SELECT 1")
        assert _objects(conn) == before
        with conn.pipeline():
            first = conn.execute(f"SELECT count(pgml.embed(model, body)) FROM {docs}")
            second = conn.execute("SELECT 2")
        assert first.fetchall()[0][0] > 0 and second.fetchall() == [(2,)]
        assert _objects(conn) == before
        _still_the_clients(conn)
