"""EXPLAIN of a pgml statement shows PostgreSQL's plan of it without running any model;
EXPLAIN ANALYZE runs it.  The plan is compared with PostgreSQL's own for the same
statement over a VOLATILE SQL function standing in for the call."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.integration._pgml import MODEL, create_docs, start_proxy, unique, warm_up
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

MISSING = "no-such-org/no-such-model"
STAND_IN = "pgml_stand_in"
"""A VOLATILE function of the call's signature, never inlined (as a C function is not):
what PostgreSQL plans for a call."""


@pytest.fixture(scope="module")
def proxy(cluster: PostgresCluster) -> Iterator[ProxyProcess]:
    process = start_proxy(cluster, batch_size=16)
    warm_up(process.dsn())
    cluster.psql(
        f"CREATE OR REPLACE FUNCTION {STAND_IN}(text, text) RETURNS real[] "
        "LANGUAGE plpgsql VOLATILE AS $$ BEGIN RETURN ARRAY[length($2)::real]; END $$"
    )
    yield process
    process.stop()
    cluster.psql(f"DROP FUNCTION IF EXISTS {STAND_IN}(text, text)")


@pytest.fixture(scope="module")
def docs(cluster: PostgresCluster) -> str:
    name = unique("docs")
    create_docs(cluster, name)
    return name


def _plan(conn: psycopg.Connection[Any], sql: str, binary: bool = False) -> list[str]:
    cur = conn.execute(sql, binary=binary)
    assert cur.description is not None and cur.description[0].name == "QUERY PLAN"
    return [row[0] for row in cur.fetchall()]


def _nodes(plan: list[str]) -> list[str]:
    """The plan's nodes and their relations, without costs or the calls' spelling."""
    found = []
    for line in plan:
        node = re.match(r"\s*(?:->\s*)?([A-Z][A-Za-z ]+?)(?: on (\w+))?\s+\(", line)
        if node is not None:
            found.append(f"{node.group(1)} {node.group(2) or ''}".strip())
    return found


@pytest.mark.parametrize(
    "shape",
    [
        "SELECT id, {f}({m}, body) FROM {docs} ORDER BY id",
        "SELECT id FROM {docs} WHERE ({f}({m}, body))[1] > 0",
        "SELECT count(*) FROM {docs} WHERE id < 10",
    ],
)
@pytest.mark.parametrize("explain", ["EXPLAIN", "EXPLAIN (COSTS off, ANALYZE false)"])
def test_explain_shows_postgresqls_plan_without_a_model(
    proxy: ProxyProcess, cluster: PostgresCluster, docs: str, shape: str, explain: str
) -> None:
    """A model that does not exist is never looked for: nothing runs."""
    through = f"{explain} " + shape.format(f="pgml.embed", m=f"'{MISSING}'", docs=docs)
    direct = f"{explain} " + shape.format(f=STAND_IN, m=f"'{MISSING}'", docs=docs)
    with psycopg.connect(cluster.dsn()) as reference:
        expected = _nodes(_plan(reference, direct))
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for binary in (False, True):
            assert _nodes(_plan(conn, through, binary)) == expected


def test_explain_analyze_runs_the_statement(proxy: ProxyProcess, docs: str) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        plan = _plan(conn, f"EXPLAIN ANALYZE SELECT id, pgml.embed('{MODEL}', body) FROM {docs}")
        assert any("actual time" in line for line in plan)
        with pytest.raises(psycopg.Error) as missing:
            conn.execute(f"EXPLAIN (ANALYZE) SELECT pgml.embed('{MISSING}', body) FROM {docs}")
        assert missing.value.sqlstate is not None and missing.value.sqlstate != "XX000"


def test_explain_refuses_what_postgresql_refuses(proxy: ProxyProcess, docs: str) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedColumn):
            conn.execute(f"EXPLAIN SELECT pgml.embed('{MODEL}', nothing) FROM {docs}")
        assert conn.execute("SELECT 1").fetchall() == [(1,)]
