"""The planner's rewrites of per-row calls, SQL in and SQL out: which rows the inner
query materialises, and the query that takes the scope's place.  No server."""

from __future__ import annotations

import pytest

from handlers.errors import PgmlError
from proxy.engine.executor import _next_step
from proxy.engine.planner import parse_statement
from proxy.engine.scopes import ScopeStep


def step_of(sql: str) -> ScopeStep:
    parsed = parse_statement(sql)
    assert parsed is not None
    return _next_step(parsed)


def outer(step: ScopeStep) -> str:
    """The outer query with ``M`` columns c1, c2, ... named n1, n2, ..., and the calls'
    results L0, L1, ... read from SRC."""
    columns = [[(f"c{i + 1}", f"n{i + 1}")] for i in range(len(step.slots))]
    return step.outer(columns, [f"L{i}" for i in range(len(step.calls))], "SRC")


@pytest.mark.parametrize(
    ("sql", "kind", "inner", "rest"),
    [
        (
            "SELECT i, pgml.embed('m', body) AS e FROM t WHERE x > 1 ORDER BY random() LIMIT 3",
            "late",
            "SELECT i, NULL, 'm', body FROM t WHERE x > 1 ORDER BY random() LIMIT 3",
            'SELECT __pgml_m.c1 AS "n1", L0 AS e FROM SRC ORDER BY __pgml_m.__pgml_k',
        ),
        (
            "SELECT cat, count(*), pgml.embed('m', cat) FROM t GROUP BY cat",
            "late",
            "SELECT cat, count(*), NULL, 'm', cat FROM t GROUP BY cat",
            'SELECT __pgml_m.c1 AS "n1", __pgml_m.c2 AS "n2", L0 AS "embed" FROM SRC',
        ),
        (  # HAVING's condition with the call, and then LIMIT, in the outer query
            "SELECT cat, count(*) FROM t GROUP BY cat HAVING pgml.predict('p', min(b)) = 'x' "
            "AND count(*) > 1 ORDER BY cat LIMIT 2",
            "late",
            "SELECT cat, count(*), 'p', min(b) FROM t GROUP BY cat HAVING TRUE AND count(*) > 1 "
            "ORDER BY cat ",
            'SELECT __pgml_m.c1 AS "n1", __pgml_m.c2 AS "n2" FROM SRC WHERE (L0 = \'x\') '
            "ORDER BY __pgml_m.__pgml_k LIMIT 2",
        ),
        (
            "SELECT i FROM t WHERE random() < 0.5 AND (pgml.embed('m', body))[1] > 0 ORDER BY i",
            "early",
            "SELECT i, 'm', body FROM t WHERE (random() < 0.5)",
            'SELECT __pgml_m.c1 AS "n1" FROM SRC WHERE ((L0)[1] > 0) ORDER BY __pgml_m.c1',
        ),
        (
            "SELECT cat, avg((pgml.embed('m', body))[1]) AS a FROM t t1 JOIN u ON u.id = t1.id "
            "GROUP BY cat HAVING count(*) > 1",
            "early",
            "SELECT cat, 'm', body FROM t t1 JOIN u ON u.id = t1.id",
            'SELECT __pgml_m.c1 AS "n1", avg((L0)[1]) AS a FROM SRC GROUP BY __pgml_m.c1 '
            "HAVING count(*) > 1",
        ),
        (
            "SELECT DISTINCT pgml.predict('p', body) FROM t",
            "early",
            "SELECT 'p', body FROM t",
            'SELECT DISTINCT L0 AS "predict" FROM SRC',
        ),
        (
            "UPDATE docs AS d SET e = pgml.embed('m', n.note), k = k + 1 FROM notes n "
            "WHERE n.id = d.id AND random() < 0.5",
            "update",
            "SELECT d.tableoid, d.ctid, k, 'm', n.note FROM docs AS d, notes n "
            "WHERE (n.id = d.id) AND (random() < 0.5) FOR UPDATE OF d",
            "UPDATE docs AS d SET e = L0, k = __pgml_m.c3 + 1 FROM SRC "
            "WHERE d.tableoid = __pgml_m.c1 AND d.ctid = __pgml_m.c2",
        ),
        (
            "DELETE FROM docs WHERE pgml.predict('p', body) = 'x' AND id > 3",
            "delete",
            "SELECT docs.tableoid, docs.ctid, 'p', body FROM docs WHERE (id > 3) "
            "FOR UPDATE OF docs",
            "DELETE FROM docs USING SRC WHERE docs.tableoid = __pgml_m.c1 "
            "AND docs.ctid = __pgml_m.c2 AND (L0 = 'x')",
        ),
        (
            "SELECT d.id FROM public.docs AS d TABLESAMPLE SYSTEM (50) JOIN n ON n.id = d.id, "
            "generate_series(1, 2) g WHERE (pgml.embed('m', d.body))[1] > 0 AND d.id > g "
            "ORDER BY d.id LIMIT 2 FOR NO KEY UPDATE NOWAIT FOR KEY SHARE OF n",
            "early",
            "SELECT d.tableoid, d.ctid, n.tableoid, n.ctid, d.id, 'm', d.body "
            "FROM public.docs AS d TABLESAMPLE SYSTEM (50) JOIN n ON n.id = d.id, "
            "generate_series(1, 2) g WHERE (d.id > g)",
            'SELECT __pgml_m.c5 AS "n5" FROM SRC, public.docs AS d, n '
            "WHERE d.tableoid = __pgml_m.c1 AND d.ctid = __pgml_m.c2 "
            "AND n.tableoid = __pgml_m.c3 AND n.ctid = __pgml_m.c4 AND ((L0)[1] > 0) "
            "ORDER BY __pgml_m.c5 LIMIT 2 "
            "FOR NO KEY UPDATE OF d, n NOWAIT FOR KEY SHARE OF n",
        ),
    ],
    ids=[
        "late",
        "late-grouped",
        "late-having",
        "early-where",
        "early-aggregate",
        "distinct",
        "update",
        "delete",
        "early-locking",
    ],
)
def test_rewrites(sql: str, kind: str, inner: str, rest: str) -> None:
    step = step_of(sql)
    assert step.kind == kind
    assert step.inner == inner
    assert outer(step) == rest


def test_the_outer_query_names_items_as_postgresql_named_them() -> None:
    step = step_of(
        "SELECT i, (pgml.embed('m', body))[1], upper(name) || pgml.predict('p', t.body) FROM t"
    )
    assert step.inner == "SELECT i, NULL, NULL, name, 'p', t.body, 'm', body FROM t"
    # subscripts keep the call's name; an operator's ?column? is PostgreSQL's to give
    assert outer(step) == (
        'SELECT __pgml_m.c1 AS "n1", (L1)[1] AS "embed", upper(__pgml_m.c4) || L0 FROM SRC'
    )


def test_a_subquery_next_to_a_call_is_evaluated_with_the_rows() -> None:
    step = step_of(
        "SELECT i, pgml.embed('m', body), (SELECT max(x) FROM u WHERE u.i = t.i) FROM t ORDER BY 1"
    )
    assert step.inner == (
        "SELECT i, NULL, (SELECT max(x) FROM u WHERE u.i = t.i), 'm', body FROM t ORDER BY 1"
    )


def test_a_cte_is_its_own_scope_and_the_rest_of_the_text_stays() -> None:
    sql = (
        "WITH s AS (SELECT id, pgml.predict('p', text) AS y FROM t) "
        "SELECT y, count(*) FROM s GROUP BY y"
    )
    step = step_of(sql)
    assert sql[step.span[0] : step.span[1]] == "SELECT id, pgml.predict('p', text) AS y FROM t"
    assert step.kind == "late"


def test_a_where_call_runs_first_and_a_select_list_call_after_the_filter() -> None:
    sql = "SELECT pgml.embed('m', body) FROM t WHERE pgml.predict('p', body) = 'a' LIMIT 5"
    step = step_of(sql)
    assert step.kind == "early" and [c.function.name for c in step.calls] == ["predict"]
    rest = outer(step)
    assert rest == "SELECT pgml.embed('m', __pgml_m.c1) FROM SRC WHERE (L0 = 'a') LIMIT 5"


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "SELECT count(*) FROM d WHERE EXISTS (SELECT 1 FROM d d2 "
            "WHERE (pgml.embed('m', d2.body))[1] > 0 AND d2.id = d.id)",
            'correlated subquery (it reads "d.id"',
        ),
        (
            "SELECT cat FROM t GROUP BY cat ORDER BY pgml.predict('p', cat)",
            "cannot be called in ORDER",
        ),
        ("UPDATE t SET e = pgml.embed('m', b) WHERE CURRENT OF c", "WHERE CURRENT OF"),
        (
            "SELECT cat AS ties FROM t GROUP BY cat HAVING pgml.predict('p', cat) = 'x' "
            "ORDER BY cat FETCH FIRST 2 ROWS WITH TIES",
            "beside FETCH ... WITH TIES",
        ),
    ],
    ids=["correlated", "grouped-order", "current-of", "having-with-ties"],
)
def test_places_not_evaluated_are_refused_naming_them(sql: str, message: str) -> None:
    with pytest.raises(PgmlError) as raised:
        step_of(sql)
    assert raised.value.sqlstate == "0A000"
    assert message in raised.value.message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id FROM t, (SELECT 1) s WHERE pgml.embed('m', body) IS NOT NULL FOR UPDATE",
        "WITH c AS (SELECT 1) SELECT id FROM t, c WHERE pgml.embed('m', body) IS NOT NULL "
        "FOR UPDATE OF t, c",
    ],
)
def test_a_lock_on_what_is_not_a_table_beside_a_where_call_is_refused(sql: str) -> None:
    """The rows are locked again by ``ctid`` after the calls ran: only tables have one."""
    with pytest.raises(PgmlError, match="can lock only tables named in FROM"):
        step_of(sql)
