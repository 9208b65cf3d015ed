"""Every statement shape of SPEC §2 with pgml calls, through psql and psycopg's
ClientCursor (simple Query protocol): values against sentence-transformers, column
names, type OIDs, row counts, command tags and transaction behaviour."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors

import proxy as package
from tests.integration._pgml import (
    BOOL_OID,
    DOC_COUNT,
    FLOAT4_OID,
    INT4_OID,
    INT8_OID,
    MODEL,
    REAL_ARRAY_OID,
    TEXT_OID,
    Answer,
    Reference,
    assert_close,
    client,
    client_answer,
    create_docs,
    cursor_answer,
    doc_rows,
    expected_for,
    parse_psql,
    pgml_temp_tables,
    psql,
    psql_answer,
    start_proxy,
    unique,
    warm_up,
)
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

Run = Callable[[str], Answer]


@pytest.fixture(scope="module")
def pgml_proxy(cluster: PostgresCluster) -> Iterator[ProxyProcess]:
    """Batches of 7 rows, so that the 23 distinct bodies of ``docs`` take 4 batches."""
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


@pytest.fixture
def direct(direct_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def conn(
    pgml_proxy: ProxyProcess, docs: str, scratch: Callable[[str], str]
) -> Iterator[psycopg.Connection[Any]]:
    """Closed before ``docs`` and ``scratch`` drop their tables, so no lock is held."""
    with client(pgml_proxy.dsn()) as connection:
        yield connection
        settle(connection)


@pytest.fixture(params=["psql", "psycopg"])
def run(
    request: pytest.FixtureRequest,
    pgml_proxy: ProxyProcess,
    docs: str,
    scratch: Callable[[str], str],
) -> Iterator[Run]:
    """One statement through psql (its own session each time) or a ClientCursor."""
    if request.param == "psql":
        yield lambda sql: psql_answer(pgml_proxy.dsn(), sql)
        return
    with client(pgml_proxy.dsn()) as connection:
        yield lambda sql: client_answer(connection, sql)
        settle(connection)


def settle(connection: psycopg.Connection[Any]) -> None:
    """End whatever transaction a failed test left open."""
    with contextlib.suppress(psycopg.Error):
        connection.rollback()


def status(connection: psycopg.Connection[Any]) -> psycopg.pq.TransactionStatus:
    return connection.info.transaction_status


def check_shape(answer: Answer, columns: list[str], oids: list[int], tag: str) -> None:
    assert answer.columns == columns
    if answer.oids is not None:
        assert answer.oids == oids
    assert answer.tag == tag


def bodies() -> dict[int, str | None]:
    return {i: body for i, body, _ in doc_rows()}


def first_components() -> dict[int, float]:
    """Each non-NULL row's first embedding component, from sentence-transformers."""
    return {i: Reference.one(b)[0] for i, b in bodies().items() if b is not None}


def threshold() -> float:
    """A value that splits the rows' first components, far from any of them."""
    values = sorted(set(first_components().values()))
    low, high = values[len(values) // 2 - 1], values[len(values) // 2]
    assert high - low > 1e-4
    return round((low + high) / 2, 6)


# --- 1. literal calls with no FROM ------------------------------------------------------


def test_literal_call_without_alias_is_named_embed(run: Run) -> None:
    answer = run(f"SELECT pgml.embed('{MODEL}', 'hello world')")
    check_shape(answer, ["embed"], [REAL_ARRAY_OID], "SELECT 1")
    assert_close(answer.rows[0][0], Reference.one("hello world"))


def test_literal_calls_with_aliases(run: Run) -> None:
    answer = run(f"SELECT pgml.version() AS v, pgml.embed('{MODEL}', 'hello world') AS e")
    check_shape(answer, ["v", "e"], [TEXT_OID, REAL_ARRAY_OID], "SELECT 1")
    assert answer.rows[0][0] == package.__version__
    assert_close(answer.rows[0][1], Reference.one("hello world"))


def test_version_is_named_version(run: Run) -> None:
    answer = run("SELECT pgml.version()")
    check_shape(answer, ["version"], [TEXT_OID], "SELECT 1")
    assert answer.rows == [(package.__version__,)]


def test_literal_calls_under_casts_and_subscripts_keep_their_name(run: Run) -> None:
    answer = run(
        f"SELECT (pgml.embed('{MODEL}', 'hello world'))[1:3], "
        f"pgml.embed('{MODEL}', 'hello world')::text, "
        f"(pgml.embed('{MODEL}', 'hello world'))[2] AS second"
    )
    check_shape(
        answer, ["embed", "embed", "second"], [REAL_ARRAY_OID, TEXT_OID, FLOAT4_OID], "SELECT 1"
    )
    expected = Reference.one("hello world")
    assert_close(answer.rows[0][0], expected[:3])
    as_text = answer.rows[0][1]
    vector = as_text if isinstance(as_text, list) else [float(v) for v in as_text[1:-1].split(",")]
    assert_close(vector, expected)
    assert abs(answer.rows[0][2] - expected[1]) < 1e-5


def test_named_arguments_and_kwargs(run: Run) -> None:
    answer = run(
        f"SELECT pgml.embed(text => 'hello world', transformer => '{MODEL}') AS a, "
        f"pgml.embed('{MODEL}', 'hello world', kwargs => '{{\"normalize\": false}}') AS b, "
        f"pgml.embed('{MODEL}', text => 'hello world', "
        "kwargs => '{\"normalize\": false}'::jsonb) AS c, "
        f"pgml.embed('{MODEL}', 'hello world', '{{}}') AS d"
    )
    check_shape(answer, ["a", "b", "c", "d"], [REAL_ARRAY_OID] * 4, "SELECT 1")
    a, b, c, d = answer.rows[0]
    expected = Reference.one("hello world")
    assert_close(a, expected)
    assert_close(d, expected)
    assert_close(c, b)
    norm = math.sqrt(sum(v * v for v in b))
    assert abs(norm - 1) > 0.01, "normalize: false still gave a unit vector"
    assert_close([v / norm for v in b], expected)


def test_rewritten_statement_keeps_postgres_column_names_and_types(
    run: Run, direct: psycopg.Connection[Any]
) -> None:
    """Only the pgml call may change: the rest of the select list is PostgreSQL's own."""
    template = (
        "SELECT substr({v}, 1, 3), char_length({v}), pow(2, 3), "
        "date_part('year', DATE '2024-05-01'), now() IS NOT NULL AS ok"
    )
    answer = run(template.format(v="pgml.version()"))
    expected = cursor_answer(direct.execute(template.format(v="'0.1.0'::text")))
    assert answer.columns == expected.columns == ["substr", "char_length", "pow", "date_part", "ok"]
    if answer.oids is not None:
        assert answer.oids == expected.oids
    assert answer.tag == "SELECT 1"


# --- 2. table functions in FROM, set-returning calls in the select list ----------------


def test_set_returning_call_in_from_with_count(run: Run) -> None:
    answer = run(f"SELECT count(*) FROM pgml.embed('{MODEL}', ARRAY['a', 'b', 'c'])")
    check_shape(answer, ["count"], [INT8_OID], "SELECT 1")
    assert answer.rows == [(3,)]


def test_set_returning_call_in_from_with_alias(run: Run) -> None:
    answer = run(f"SELECT * FROM pgml.embed('{MODEL}', ARRAY['x']) AS e")
    check_shape(answer, ["e"], [REAL_ARRAY_OID], "SELECT 1")
    assert_close(answer.rows[0][0], Reference.one("x"))


def test_set_returning_call_in_from_without_alias_keeps_input_order(run: Run) -> None:
    texts = ["first text", "second text", "third text"]
    array = ", ".join(f"'{t}'" for t in texts)
    answer = run(f"SELECT * FROM pgml.embed('{MODEL}', ARRAY[{array}])")
    check_shape(answer, ["embed"], [REAL_ARRAY_OID], "SELECT 3")
    for row, expected in zip(answer.rows, Reference.embed(texts), strict=True):
        assert_close(row[0], expected)


def test_set_returning_call_in_from_with_column_alias(run: Run) -> None:
    """``AS e(vec)`` names the column ``vec``, as for any scalar set-returning function."""
    answer = run(f"SELECT * FROM pgml.embed('{MODEL}', ARRAY['x']) AS e(vec)")
    check_shape(answer, ["vec"], [REAL_ARRAY_OID], "SELECT 1")
    answer = run(f"SELECT vec[1] AS first FROM pgml.embed('{MODEL}', ARRAY['x']) AS e(vec)")
    assert abs(answer.rows[0][0] - Reference.one("x")[0]) < 1e-5


def test_set_returning_call_over_an_empty_array_gives_no_rows(run: Run) -> None:
    answer = run(f"SELECT count(*) FROM pgml.embed('{MODEL}', ARRAY[]::text[])")
    assert answer.rows == [(0,)]
    answer = run(f"SELECT pgml.embed('{MODEL}', '{{}}'::text[])")
    check_shape(answer, ["embed"], [REAL_ARRAY_OID], "SELECT 0")


def test_set_returning_call_in_select_list_gives_one_row_per_input(run: Run) -> None:
    answer = run(f"SELECT pgml.embed('{MODEL}', ARRAY['a', 'b'])")
    check_shape(answer, ["embed"], [REAL_ARRAY_OID], "SELECT 2")
    for row, expected in zip(answer.rows, Reference.embed(["a", "b"]), strict=True):
        assert_close(row[0], expected)


# --- 3. calls that read columns -----------------------------------------------------------


def test_column_argument_over_every_row_with_duplicates_and_nulls(run: Run, docs: str) -> None:
    answer = run(f"SELECT id, pgml.embed('{MODEL}', body) FROM {docs} ORDER BY id")
    check_shape(answer, ["id", "embed"], [INT4_OID, REAL_ARRAY_OID], f"SELECT {DOC_COUNT}")
    texts = bodies()
    assert answer.column(0) == list(texts)
    for row_id, vector in answer.rows:
        assert_close(vector, expected_for(texts[row_id]))
    assert sum(v is None for v in answer.column(1)) == DOC_COUNT // 10


def test_column_argument_over_join_where_order_by_limit(
    run: Run, docs: str, scratch: Callable[[str], str], direct: psycopg.Connection[Any]
) -> None:
    labels = scratch("labels")
    direct.execute(
        f"CREATE TABLE {labels} (cat text, label text); "
        f"INSERT INTO {labels} VALUES ('c0', 'zero'), ('c1', 'one'), ('c2', 'two')"
    )
    answer = run(
        f"SELECT d.id, lb.label, pgml.embed('{MODEL}', lb.label || ': ' || d.body) AS e "
        f"FROM {docs} AS d JOIN {labels} AS lb ON lb.cat = d.cat "
        "WHERE d.id > 5 AND d.id <= 50 ORDER BY d.id DESC LIMIT 20 OFFSET 3"
    )
    check_shape(answer, ["id", "label", "e"], [INT4_OID, TEXT_OID, REAL_ARRAY_OID], "SELECT 20")
    names = {"c0": "zero", "c1": "one", "c2": "two"}
    rows = [r for r in doc_rows() if 5 < r[0] <= 50][::-1][3:23]
    assert answer.column(0) == [r[0] for r in rows]
    for (_, label, vector), (_, body, cat) in zip(answer.rows, rows, strict=True):
        assert label == names[cat]
        assert_close(vector, None if body is None else Reference.one(f"{label}: {body}"))


def test_several_calls_reading_columns_and_a_model_column(run: Run, docs: str) -> None:
    answer = run(
        f"SELECT id, pgml.embed(model, body) AS a, pgml.embed('{MODEL}', cat) AS b, "
        f"pgml.version() AS v FROM {docs} WHERE id <= 25 ORDER BY id"
    )
    check_shape(
        answer,
        ["id", "a", "b", "v"],
        [INT4_OID, REAL_ARRAY_OID, REAL_ARRAY_OID, TEXT_OID],
        "SELECT 25",
    )
    for (row_id, a, b, v), (_, body, cat) in zip(answer.rows, doc_rows()[:25], strict=True):
        assert_close(a, expected_for(body))
        assert_close(b, Reference.one(cat))
        assert v == package.__version__, row_id


def test_column_argument_with_group_by(run: Run, docs: str) -> None:
    answer = run(
        f"SELECT cat, count(*) AS n, pgml.embed('{MODEL}', cat) AS e "
        f"FROM {docs} GROUP BY cat ORDER BY cat"
    )
    check_shape(answer, ["cat", "n", "e"], [TEXT_OID, INT8_OID, REAL_ARRAY_OID], "SELECT 3")
    assert [(c, n) for c, n, _ in answer.rows] == [("c0", 20), ("c1", 20), ("c2", 20)]
    for cat, _, vector in answer.rows:
        assert_close(vector, Reference.one(cat))


def test_column_call_under_cast_or_subscript_without_alias(run: Run, docs: str) -> None:
    """PostgreSQL names ``(f(x))[1]`` and ``f(x)::text`` after the function."""
    answer = run(
        f"SELECT id, (pgml.embed('{MODEL}', body))[1], pgml.embed('{MODEL}', body)::text "
        f"FROM {docs} WHERE id <= 12 ORDER BY id"
    )
    check_shape(answer, ["id", "embed", "embed"], [INT4_OID, FLOAT4_OID, TEXT_OID], "SELECT 12")
    for row_id, first, _ in answer.rows:
        body = bodies()[row_id]
        if body is None:
            assert first is None
        else:
            assert abs(first - Reference.one(body)[0]) < 1e-5


@pytest.mark.parametrize(
    "select",
    [
        "SELECT l.id, pgml.embed('{m}', l.body) AS e FROM {t} AS l ORDER BY l.id",
        "SELECT id, pgml.embed('{m}', v) AS e FROM {t} ORDER BY id",
        "SELECT id, pgml.embed('{m}', a0) AS e FROM {t} ORDER BY id",
        "SELECT id, pgml.embed('{m}', k) AS e FROM {t} ORDER BY id",
    ],
    ids=["table-alias-l", "column-v", "column-a0", "column-k"],
)
def test_user_names_that_the_rewrite_also_uses(
    run: Run, select: str, scratch: Callable[[str], str], direct: psycopg.Connection[Any]
) -> None:
    """A user's own table alias or column names must not be captured by the rewrite."""
    table = scratch("names")
    direct.execute(
        f"CREATE TABLE {table} (id int, body text, v text, a0 text, k text); "
        f"INSERT INTO {table} SELECT g, 'text ' || g, 'text ' || g, 'text ' || g, 'text ' || g "
        "FROM generate_series(1, 3) AS g"
    )
    answer = run(select.format(m=MODEL, t=table))
    check_shape(answer, ["id", "e"], [INT4_OID, REAL_ARRAY_OID], "SELECT 3")
    for row_id, vector in answer.rows:
        assert_close(vector, Reference.one(f"text {row_id}"))


# --- 4./5. CTEs, subqueries, WHERE and ORDER BY -----------------------------------------


def test_call_in_cte_with_group_by_outer_query(run: Run, docs: str) -> None:
    answer = run(
        f"WITH s AS (SELECT id, cat, pgml.embed('{MODEL}', body) AS y FROM {docs}) "
        "SELECT cat, count(*) AS n, count(y) AS embedded, "
        "bool_and(cardinality(y) = 384) AS dims FROM s GROUP BY cat ORDER BY cat"
    )
    check_shape(
        answer,
        ["cat", "n", "embedded", "dims"],
        [TEXT_OID, INT8_OID, INT8_OID, BOOL_OID],
        "SELECT 3",
    )
    expected = []
    for cat in ("c0", "c1", "c2"):
        rows = [b for _, b, c in doc_rows() if c == cat]
        expected.append((cat, len(rows), sum(b is not None for b in rows)))
    assert [r[:3] for r in answer.rows] == expected
    assert all(r[3] in (True, "t") for r in answer.rows)


def test_call_in_subquery_in_from_with_outer_where_and_group_by(run: Run, docs: str) -> None:
    answer = run(
        "SELECT cat, count(*) AS n FROM "
        f"(SELECT cat, pgml.embed('{MODEL}', body) AS e FROM {docs} WHERE id <= 30) AS s "
        "WHERE e IS NOT NULL GROUP BY cat ORDER BY cat"
    )
    check_shape(answer, ["cat", "n"], [TEXT_OID, INT8_OID], "SELECT 3")
    counts: dict[str, int] = {}
    for i, body, cat in doc_rows():
        if i <= 30 and body is not None:
            counts[cat] = counts.get(cat, 0) + 1
    assert answer.rows == sorted(counts.items())


def test_call_in_where_of_an_uncorrelated_in_subquery(run: Run, docs: str) -> None:
    limit = threshold()
    answer = run(
        f"SELECT id FROM {docs} WHERE body IN (SELECT body FROM {docs} "
        f"WHERE (pgml.embed('{MODEL}', body))[1] > {limit}) ORDER BY id"
    )
    expected = [i for i, x in first_components().items() if x > limit]
    assert 0 < len(expected) < DOC_COUNT
    assert answer.column(0) == expected
    assert answer.tag == f"SELECT {len(expected)}"


def test_call_in_where(run: Run, docs: str) -> None:
    limit = threshold()
    answer = run(
        f"SELECT id FROM {docs} WHERE (pgml.embed('{MODEL}', body))[1] > {limit} ORDER BY id"
    )
    expected = [i for i, x in first_components().items() if x > limit]
    check_shape(answer, ["id"], [INT4_OID], f"SELECT {len(expected)}")
    assert answer.column(0) == expected


def test_call_in_where_next_to_other_conditions_with_limit(run: Run, docs: str) -> None:
    limit = threshold()
    answer = run(
        f"SELECT id, pgml.embed('{MODEL}', body) AS e FROM {docs} "
        f"WHERE id % 2 = 1 AND (pgml.embed('{MODEL}', body))[1] <= {limit} "
        "ORDER BY id LIMIT 5"
    )
    expected = [i for i, x in first_components().items() if i % 2 == 1 and x <= limit][:5]
    assert answer.column(0) == expected
    for row_id, vector in answer.rows:
        assert_close(vector, expected_for(bodies()[row_id]))


def test_call_in_order_by(run: Run, docs: str) -> None:
    answer = run(
        f"SELECT id FROM {docs} WHERE body IS NOT NULL "
        f"ORDER BY (pgml.embed('{MODEL}', body))[1] DESC, id LIMIT 10"
    )
    ranked = sorted(first_components().items(), key=lambda item: (-item[1], item[0]))
    check_shape(answer, ["id"], [INT4_OID], "SELECT 10")
    assert answer.column(0) == [i for i, _ in ranked[:10]]


# --- 6. writes ----------------------------------------------------------------------------


def stored(direct: psycopg.Connection[Any], sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in direct.execute(sql).fetchall()]


def test_insert_select(
    run: Run, docs: str, scratch: Callable[[str], str], direct: psycopg.Connection[Any]
) -> None:
    out = scratch("out")
    direct.execute(f"CREATE TABLE {out} (id int, e real[])")
    answer = run(f"INSERT INTO {out} SELECT id, pgml.embed('{MODEL}', body) FROM {docs}")
    check_shape(answer, [], [], f"INSERT 0 {DOC_COUNT}")
    rows = stored(direct, f"SELECT id, e FROM {out} ORDER BY id")
    assert [r[0] for r in rows] == list(bodies())
    for row_id, vector in rows:
        assert_close(vector, expected_for(bodies()[row_id]))


def test_insert_values_with_a_literal_call(
    run: Run, scratch: Callable[[str], str], direct: psycopg.Connection[Any]
) -> None:
    out = scratch("out")
    direct.execute(f"CREATE TABLE {out} (id int, e real[])")
    answer = run(f"INSERT INTO {out} (id, e) VALUES (1, pgml.embed('{MODEL}', 'one')), (2, NULL)")
    check_shape(answer, [], [], "INSERT 0 2")
    rows = stored(direct, f"SELECT id, e FROM {out} ORDER BY id")
    assert_close(rows[0][1], Reference.one("one"))
    assert rows[1] == (2, None)


def test_create_table_as(
    run: Run, docs: str, scratch: Callable[[str], str], direct: psycopg.Connection[Any]
) -> None:
    out = scratch("ctas")
    answer = run(
        f"CREATE TABLE {out} AS SELECT id, pgml.embed('{MODEL}', body) AS e "
        f"FROM {docs} WHERE id <= 20"
    )
    check_shape(answer, [], [], "SELECT 20")
    types = stored(
        direct,
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        f"WHERE attrelid = '{out}'::regclass AND attnum > 0 ORDER BY attnum",
    )
    assert types == [("id", "integer"), ("e", "real[]")]
    for row_id, vector in stored(direct, f"SELECT id, e FROM {out} ORDER BY id"):
        assert_close(vector, expected_for(bodies()[row_id]))


def test_update_set(run: Run, docs: str, direct: psycopg.Connection[Any]) -> None:
    answer = run(f"UPDATE {docs} SET emb = pgml.embed('{MODEL}', body) WHERE id < 5")
    check_shape(answer, [], [], "UPDATE 4")
    rows = stored(direct, f"SELECT id, emb FROM {docs} ORDER BY id")
    for row_id, vector in rows:
        assert_close(vector, expected_for(bodies()[row_id]) if row_id < 5 else None)


def test_update_from_another_table(
    run: Run, docs: str, scratch: Callable[[str], str], direct: psycopg.Connection[Any]
) -> None:
    texts = scratch("texts")
    direct.execute(
        f"CREATE TABLE {texts} (id int, note text); "
        f"INSERT INTO {texts} VALUES (1, 'note one'), (2, 'note two'), (3, NULL)"
    )
    answer = run(
        f"UPDATE {docs} AS d SET emb = pgml.embed('{MODEL}', n.note) "
        f"FROM {texts} AS n WHERE n.id = d.id"
    )
    check_shape(answer, [], [], "UPDATE 3")
    rows = stored(direct, f"SELECT id, emb FROM {docs} WHERE id <= 4 ORDER BY id")
    assert_close(rows[0][1], Reference.one("note one"))
    assert_close(rows[1][1], Reference.one("note two"))
    assert rows[2][1] is None
    assert rows[3][1] is None


def test_delete_where(run: Run, docs: str, direct: psycopg.Connection[Any]) -> None:
    limit = threshold()
    answer = run(f"DELETE FROM {docs} WHERE (pgml.embed('{MODEL}', body))[1] > {limit}")
    gone = {i for i, x in first_components().items() if x > limit}
    check_shape(answer, [], [], f"DELETE {len(gone)}")
    left = [r[0] for r in stored(direct, f"SELECT id FROM {docs} ORDER BY id")]
    assert left == [i for i in bodies() if i not in gone]


# --- 7. several statements in one Query ---------------------------------------------------


def multi_statement(docs: str, out: str) -> str:
    return (
        f"CREATE TABLE {out} (id int, e real[]); "
        f"INSERT INTO {out} SELECT id, pgml.embed('{MODEL}', body) FROM {docs} WHERE id <= 3; "
        f"SELECT id, pgml.embed('{MODEL}', body) AS e FROM {docs} WHERE id <= 2 ORDER BY id; "
        "SELECT 1 AS one"
    )


def check_multi(answers: list[Answer], direct: psycopg.Connection[Any], out: str) -> None:
    assert [a.tag for a in answers] == ["CREATE TABLE", "INSERT 0 3", "SELECT 2", "SELECT 1"]
    assert answers[2].columns == ["id", "e"]
    assert answers[2].column(0) == [1, 2]
    for row_id, vector in answers[2].rows:
        assert_close(vector, expected_for(bodies()[row_id]))
    assert answers[3].columns == ["one"]
    assert answers[3].rows == [(1,)]
    rows = stored(direct, f"SELECT id, e FROM {out} ORDER BY id")
    assert [r[0] for r in rows] == [1, 2, 3]
    for row_id, vector in rows:
        assert_close(vector, expected_for(bodies()[row_id]))


def test_several_statements_in_one_query_through_psql(
    pgml_proxy: ProxyProcess,
    docs: str,
    scratch: Callable[[str], str],
    direct: psycopg.Connection[Any],
) -> None:
    out = scratch("multi")
    result = psql(pgml_proxy.dsn(), multi_statement(docs, out))
    assert result.returncode == 0, result.stderr
    check_multi(parse_psql(result.stdout), direct, out)


def test_several_statements_in_one_query_through_psycopg(
    conn: psycopg.Connection[Any],
    docs: str,
    scratch: Callable[[str], str],
    direct: psycopg.Connection[Any],
) -> None:
    out = scratch("multi")
    answers = []
    with conn.cursor() as cur:
        cur.execute(multi_statement(docs, out))
        while True:
            answers.append(cursor_answer(cur))
            if not cur.nextset():
                break
    check_multi(answers, direct, out)
    assert answers[2].oids == [INT4_OID, REAL_ARRAY_OID]


def failing_multi_statement(out: str, failure: str, value: str) -> str:
    return (
        f"CREATE TABLE {out} (id int, e real[]); "
        f"INSERT INTO {out} VALUES (1, {value}); "
        f"{failure}; "
        f"INSERT INTO {out} VALUES (2, NULL)"
    )


@pytest.mark.parametrize(
    "failure",
    ["SELECT pgml.embed('no-such-org/no-such-model', 'x')", "SELECT 1 / 0"],
    ids=["pgml-error", "postgres-error"],
)
def test_several_statements_stop_at_the_first_error_and_roll_back_together(
    pgml_proxy: ProxyProcess,
    scratch: Callable[[str], str],
    direct: psycopg.Connection[Any],
    failure: str,
) -> None:
    """A multi-statement Query is one implicit transaction: an error undoes all of it."""
    sql = failing_multi_statement(scratch("multi"), failure, f"pgml.embed('{MODEL}', 'one')")
    reference = scratch("multi")
    with pytest.raises(psycopg.Error) as direct_error:
        direct.execute(failing_multi_statement(reference, "SELECT 1 / 0", "NULL"))
    assert direct_error.value.sqlstate == "22012"
    assert stored(direct, f"SELECT to_regclass('{reference}')") == [(None,)]

    out = sql.split()[2]
    result = psql(pgml_proxy.dsn(), sql)
    answers = parse_psql(result.stdout)
    assert [a.tag for a in answers] == ["CREATE TABLE", "INSERT 0 1"]
    assert "ERROR:" in result.stderr
    assert stored(direct, f"SELECT to_regclass('{out}')") == [(None,)]

    with client(pgml_proxy.dsn()) as conn:
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(sql)
        assert raised.value.sqlstate in ("42704", "22012")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert stored(direct, f"SELECT to_regclass('{out}')") == [(None,)]
        assert conn.execute("SELECT pgml.version()").fetchone() == (package.__version__,)


def test_trailing_comment_after_a_pgml_statement(conn: psycopg.Connection[Any]) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT pgml.version() AS v; -- trailing comment")
        assert cur.fetchall() == [(package.__version__,)]
        assert cur.statusmessage == "SELECT 1"
        assert not cur.nextset()


# --- 8. explicit transactions ------------------------------------------------------------


def test_transaction_sees_its_own_rows_and_temp_tables(
    conn: psycopg.Connection[Any], docs: str, direct: psycopg.Connection[Any]
) -> None:
    idle, in_trans = psycopg.pq.TransactionStatus.IDLE, psycopg.pq.TransactionStatus.INTRANS
    conn.execute("BEGIN")
    conn.execute(f"INSERT INTO {docs} (id, body, cat) VALUES (1001, 'uncommitted row', 'c9')")
    conn.execute("CREATE TEMP TABLE notes (id int, note text)")
    conn.execute("INSERT INTO notes VALUES (1, 'temporary note'), (2, NULL)")
    answer = client_answer(
        conn, f"SELECT id, pgml.embed('{MODEL}', body) AS e FROM {docs} WHERE id > 1000"
    )
    assert answer.column(0) == [1001]
    assert_close(answer.rows[0][1], Reference.one("uncommitted row"))
    assert conn.info.transaction_status == in_trans
    assert pgml_temp_tables(conn) == 0
    answer = client_answer(
        conn, f"SELECT id, pgml.embed('{MODEL}', note) AS e FROM notes ORDER BY id"
    )
    assert_close(answer.rows[0][1], Reference.one("temporary note"))
    assert answer.rows[1] == (2, None)
    assert pgml_temp_tables(conn) == 0
    conn.execute(f"UPDATE {docs} SET emb = pgml.embed('{MODEL}', body) WHERE id = 1001")
    assert stored(direct, f"SELECT count(*) FROM {docs} WHERE id = 1001") == [(0,)]
    conn.execute("COMMIT")
    assert conn.info.transaction_status == idle
    rows = stored(direct, f"SELECT emb FROM {docs} WHERE id = 1001")
    assert_close(rows[0][0], Reference.one("uncommitted row"))
    assert pgml_temp_tables(conn) == 0


def test_transaction_through_psql(
    pgml_proxy: ProxyProcess, docs: str, direct: psycopg.Connection[Any]
) -> None:
    result = psql(
        pgml_proxy.dsn(),
        "BEGIN",
        "CREATE TEMP TABLE notes AS SELECT 'a temp note'::text AS note",
        f"INSERT INTO {docs} (id, body, cat) SELECT 2001, note, 'c9' FROM notes",
        f"SELECT id, pgml.embed('{MODEL}', body) AS e FROM {docs} WHERE id > 2000",
        r"SELECT count(*) AS leftovers FROM pg_class WHERE relname LIKE '\_\_pgml%'",
        "COMMIT",
    )
    assert result.returncode == 0, result.stderr
    answers = parse_psql(result.stdout)
    assert [a.tag for a in answers] == [
        "BEGIN",
        "SELECT 1",
        "INSERT 0 1",
        "SELECT 1",
        "SELECT 1",
        "COMMIT",
    ]
    assert_close(answers[3].rows[0][1], Reference.one("a temp note"))
    assert answers[4].rows == [(0,)]
    assert stored(direct, f"SELECT body FROM {docs} WHERE id = 2001") == [("a temp note",)]


def test_failed_call_aborts_the_transaction(
    conn: psycopg.Connection[Any], docs: str, direct: psycopg.Connection[Any]
) -> None:
    conn.execute("BEGIN")
    conn.execute(f"INSERT INTO {docs} (id, body, cat) VALUES (3001, 'doomed', 'c9')")
    with pytest.raises(psycopg.Error) as raised:
        conn.execute(f"SELECT pgml.embed('no-such-org/no-such-model', body) FROM {docs}")
    assert raised.value.sqlstate == "42704"
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    with pytest.raises(errors.InFailedSqlTransaction):
        conn.execute("SELECT 1")
    with pytest.raises(errors.InFailedSqlTransaction):
        conn.execute(f"SELECT pgml.embed('{MODEL}', 'x')")
    conn.execute("ROLLBACK")
    assert status(conn) == psycopg.pq.TransactionStatus.IDLE
    assert stored(direct, f"SELECT count(*) FROM {docs} WHERE id = 3001") == [(0,)]
    answer = client_answer(conn, f"SELECT pgml.embed('{MODEL}', 'x')")
    assert_close(answer.rows[0][0], Reference.one("x"))


@pytest.mark.parametrize(
    "failure",
    [
        "SELECT pgml.embed('no-such-org/no-such-model', body) FROM {t}",
        "SELECT 1 / (id - id), pgml.embed('{m}', body) FROM {t}",
        "SELECT pgml.embed('{m}', body || (1 / (id - id))::text) FROM {t}",
    ],
    ids=["pgml-error", "error-in-final-statement", "error-reading-arguments"],
)
def test_savepoint_restores_a_usable_transaction(
    conn: psycopg.Connection[Any], docs: str, direct: psycopg.Connection[Any], failure: str
) -> None:
    conn.execute("BEGIN")
    conn.execute(f"INSERT INTO {docs} (id, body, cat) VALUES (4001, 'kept row', 'c9')")
    conn.execute("SAVEPOINT before_call")
    with pytest.raises(psycopg.Error):
        conn.execute(failure.format(m=MODEL, t=docs))
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    conn.execute("ROLLBACK TO SAVEPOINT before_call")
    answer = client_answer(
        conn, f"SELECT id, pgml.embed('{MODEL}', body) AS e FROM {docs} WHERE id > 4000"
    )
    assert answer.column(0) == [4001]
    assert_close(answer.rows[0][1], Reference.one("kept row"))
    assert pgml_temp_tables(conn) == 0
    conn.execute("COMMIT")
    assert stored(direct, f"SELECT body FROM {docs} WHERE id = 4001") == [("kept row",)]


def test_no_temporary_tables_left_after_statements(
    conn: psycopg.Connection[Any], docs: str
) -> None:
    conn.execute(f"SELECT id, pgml.embed('{MODEL}', body) FROM {docs}").fetchall()
    assert pgml_temp_tables(conn) == 0
    conn.execute(f"SELECT pgml.embed('{MODEL}', 'x'), pgml.version()").fetchall()
    assert pgml_temp_tables(conn) == 0
    with pytest.raises(psycopg.Error):
        conn.execute(f"SELECT pgml.embed('no-such-org/no-such-model', body) FROM {docs}")
    assert pgml_temp_tables(conn) == 0


def test_implicit_transaction_of_psycopg(
    pgml_proxy: ProxyProcess, docs: str, direct: psycopg.Connection[Any]
) -> None:
    """psycopg without autocommit opens the transaction itself with BEGIN."""
    with client(pgml_proxy.dsn(), autocommit=False) as conn:
        conn.execute(f"UPDATE {docs} SET emb = pgml.embed('{MODEL}', body) WHERE id = 1")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert stored(direct, f"SELECT emb FROM {docs} WHERE id = 1") == [(None,)]
        conn.commit()
    rows = stored(direct, f"SELECT emb FROM {docs} WHERE id = 1")
    assert_close(rows[0][0], expected_for(bodies()[1]))


# --- statements that mention pgml but call no pgml function ------------------------------


@pytest.fixture
def pgml_schema_table(cluster: PostgresCluster) -> Iterator[str]:
    created = cluster.psql("SELECT to_regnamespace('pgml') IS NULL").strip() == "t"
    if created:
        cluster.psql("CREATE SCHEMA pgml")
    name = unique("sometable")
    cluster.psql(
        f"CREATE TABLE pgml.{name} (id int, embed text); "
        f"INSERT INTO pgml.{name} VALUES (1, 'pgml.embed(''m'', ''x'')'), (2, NULL); "
        "CREATE FUNCTION pgml.double_it(int) RETURNS int LANGUAGE sql AS 'SELECT $1 * 2'"
    )
    yield name
    cluster.psql(f"DROP TABLE pgml.{name}; DROP FUNCTION pgml.double_it(int)")
    if created:
        cluster.psql("DROP SCHEMA pgml")


PASS_THROUGH = [
    "SELECT * FROM pgml.{t} ORDER BY id",
    "SELECT s.embed FROM \"pgml\".{t} AS s WHERE s.embed LIKE 'pgml.embed(%'",
    "SELECT count(*) FROM PGML.{t}",
    "SELECT pgml.double_it(21) AS doubled",
    "SELECT 'pgml.embed(''m'', ''x'')' AS s, 'pgml.version()' AS v",
    "SELECT 1 AS one -- pgml.embed('m', 'x')",
    "SELECT /* pgml.embed('m', 'x') */ 2 AS two",
    "-- pgml\nSELECT 3 AS three",
    "SELECT 'a' AS x; SELECT 'pgml.version()' AS y",
]


@pytest.mark.parametrize("sql", PASS_THROUGH)
def test_statements_without_pgml_calls_pass_through(
    pgml_proxy: ProxyProcess,
    direct_dsn: str,
    pgml_schema_table: str,
    sql: str,
) -> None:
    text = sql.format(t=pgml_schema_table)
    proxied = psql(pgml_proxy.dsn(), text)
    expected = psql(direct_dsn, text)
    assert expected.returncode == 0, expected.stderr
    assert (proxied.returncode, proxied.stdout, proxied.stderr) == (
        expected.returncode,
        expected.stdout,
        expected.stderr,
    )
    answers = []
    for dsn in (pgml_proxy.dsn(), direct_dsn):
        with client(dsn) as connection, connection.cursor() as cur:
            cur.execute(text)
            results = [cursor_answer(cur)]
            while cur.nextset():
                results.append(cursor_answer(cur))
            answers.append(results)
    assert answers[0] == answers[1]


@pytest.mark.parametrize(
    ("statement", "check"),
    [
        (
            "INSERT INTO {t} VALUES ('call pgml.embed(''m'', body)')",
            "SELECT tip FROM {t}",
        ),
        (
            "COMMENT ON TABLE {t} IS 'filled by pgml.embed(model, text)'",
            "SELECT obj_description('{t}'::regclass)",
        ),
        (
            "CREATE TABLE {t}_copy AS SELECT 'use pgml.embed(m, body)'::text AS tip",
            "SELECT tip FROM {t}_copy",
        ),
        (
            "CREATE TABLE {t}_default (tip text DEFAULT 'pgml.embed(m, body)'); "
            "INSERT INTO {t}_default DEFAULT VALUES",
            "SELECT tip FROM {t}_default",
        ),
    ],
    ids=["insert", "comment", "create-table-as", "create-table-default"],
)
def test_string_literals_that_read_like_calls_pass_through(
    pgml_proxy: ProxyProcess,
    scratch: Callable[[str], str],
    direct: psycopg.Connection[Any],
    statement: str,
    check: str,
) -> None:
    """A string literal that reads like a pgml call is data, in any statement."""
    table = scratch("notes")
    direct.execute(f"CREATE TABLE {table} (tip text)")
    try:
        with client(pgml_proxy.dsn()) as conn:
            conn.execute(statement.format(t=table))
        rows = stored(direct, check.format(t=table))
        assert len(rows) == 1
        assert "pgml.embed(" in rows[0][0]
    finally:
        direct.execute(f"DROP TABLE IF EXISTS {table}_copy, {table}_default")
