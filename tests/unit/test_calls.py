"""Which spellings of a call are pgml's: PostgreSQL folds unquoted names to lower case
and takes quoted ones as written."""

from __future__ import annotations

import pytest

from proxy.engine.calls import mentions_call
from proxy.engine.planner import parse_statement

PGML = [
    'SELECT "pgml"."embed"(m, body) FROM docs',
    'SELECT "pgml".embed(m, body) FROM docs',
    'SELECT pgml."embed"(m, body) FROM docs',
    "SELECT PGML.EMBED(m, body) FROM docs",
    "SELECT pgml . embed (m, body) FROM docs",
    "SELECT * FROM pgml.embed('m', 'x')",
    "SELECT * FROM \"pgml\".\"embed\"('m', 'x') AS e(v)",
    "SELECT * FROM pgml.transform('text-classification', inputs => ARRAY['x'])",
    "SELECT * FROM PGML.RANK('m', 'q', ARRAY['a'])",
]
NOT_PGML = [
    'SELECT "PGML".embed(m, body) FROM docs',
    'SELECT pgml."EMBED"(m, body) FROM docs',
    'SELECT "Pgml"."embed"(m, body) FROM docs',
    "SELECT 'pgml.embed(m, body)' FROM docs",
    "SELECT embed(m, body) FROM docs",
]


@pytest.mark.parametrize("sql", PGML)
def test_spellings_postgresql_resolves_to_the_function(sql: str) -> None:
    parsed = parse_statement(sql)
    assert parsed is not None
    assert len(parsed.calls) == 1
    assert mentions_call(sql)


@pytest.mark.parametrize("sql", NOT_PGML)
def test_other_spellings_are_not_pgml(sql: str) -> None:
    assert parse_statement(sql) is None


def test_transform_in_from_keeps_its_arguments_in_order() -> None:
    parsed = parse_statement(
        "SELECT * FROM pgml.transform('text-classification', inputs => ARRAY['x'])"
    )
    assert parsed is not None
    (call,) = parsed.calls
    assert call.function.name == "transform"
    assert call.names == [None, "inputs"]
    assert [a.sql() for a in call.args] == ["'text-classification'", "ARRAY('x')"]
