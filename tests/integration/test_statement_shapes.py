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

