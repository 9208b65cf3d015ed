"""Which spellings of a call are pgml's: PostgreSQL folds unquoted names to lower case
and takes quoted ones as written."""

from __future__ import annotations

import pytest

from proxy.engine.binding import pick_overload, syntax_oids
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
    # names other systems give functions of their own, after a comma in FROM
    "SELECT * FROM docs d, pgml.transform('{}'::jsonb, '{}'::jsonb, ARRAY[d.body]) AS x",
    "SELECT * FROM docs d, LATERAL pgml.predict('p', d.body) AS x",
    "SELECT transform(1, 2, 3), pgml.predict('p', body) FROM docs",
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


SMALLINT, INTEGER_ = 21, 23
GUESSES = [
    ("SELECT pgml.predict('p', ARRAY[a, b]) FROM t", [], "project_name", "text[]"),
    ("SELECT pgml.predict('p', ARRAY[1.5, 2]) FROM t", [], "project_name", "real[]"),
    ("SELECT pgml.predict(5, ARRAY[a, b]) FROM t", [], "model_id", "real[]"),
    ("SELECT pgml.predict($1, ARRAY[a, b]) FROM t", [SMALLINT], "model_id", "real[]"),
    ("SELECT pgml.predict(m::bigint, ARRAY[a, b]) FROM t", [], "model_id", "real[]"),
    ("SELECT pgml.predict(CAST(m AS int), t) FROM t", [], "model_id", "record"),
    ("SELECT pgml.predict($1, t) FROM t", [INTEGER_], "model_id", "record"),
]


@pytest.mark.parametrize(("sql", "oids", "first", "second"), GUESSES)
def test_the_syntax_types_numbers_casts_and_parameters_as_postgresql_does(
    sql: str, oids: list[int], first: str, second: str
) -> None:
    """Before PostgreSQL is asked, a number is an integer, a cast its type and a bound
    parameter its declared type, so a model's id picks the overload that names a model;
    an array of columns is one of text only where the rest fits a text overload."""
    parsed = parse_statement(sql)
    assert parsed is not None
    (call,) = parsed.calls
    overload = pick_overload(call, syntax_oids(call, oids))
    assert (overload.params[0].name, overload.params[1].type) == (first, second)
