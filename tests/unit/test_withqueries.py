"""Which of a statement's WITH queries a constant call's arguments read, and those they
read in turn: what the proxy runs once and carries.  No server."""

from __future__ import annotations

import pytest

from handlers.errors import PgmlError
from proxy.engine.planner import parse_statement
from proxy.engine.split import with_closure
from proxy.engine.withqueries import _statement_ctes

SQL = (
    "WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a), c AS (SELECT 2 AS y), "
    "d AS (SELECT * FROM b) SELECT (SELECT y FROM c), k.* FROM "
    "pgml.chunk('character', (SELECT string_agg(x::text, ' ') FROM d)) AS k"
)


def test_the_arguments_read_their_with_queries_and_those_these_read() -> None:
    parsed = parse_statement(SQL)
    assert parsed is not None
    [call] = parsed.calls
    assert call.reads_with == {"d"}
    ctes = _statement_ctes(parsed, set(call.reads_with))
    assert with_closure(set(call.reads_with), {c.alias.lower(): c for c in ctes}) == {
        "a",
        "b",
        "d",
    }  # not c


def test_a_with_query_of_a_subquery_is_not_the_statements() -> None:
    parsed = parse_statement(
        "SELECT * FROM (WITH s AS (SELECT 'a b' AS t) SELECT k.* FROM "
        "pgml.chunk('character', (SELECT t FROM s)) AS k) AS q"
    )
    assert parsed is not None
    [call] = parsed.calls
    with pytest.raises(PgmlError, match='WITH query "s" of a subquery') as refused:
        _statement_ctes(parsed, set(call.reads_with))
    assert refused.value.sqlstate == "0A000"


def test_a_with_query_an_argument_defines_itself_is_its_own() -> None:
    parsed = parse_statement(
        "WITH s AS (SELECT 1) SELECT * FROM pgml.chunk('character', "
        "(WITH s AS (SELECT 'a' AS t) SELECT t FROM s))"
    )
    assert parsed is not None
    assert parsed.calls[0].reads_with == frozenset()
