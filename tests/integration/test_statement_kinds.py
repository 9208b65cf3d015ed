"""Statement kinds around a pgml call, each against PostgreSQL's own answer for the same
statement over a VOLATILE stand-in function: the command tag, the columns' names and
types, the rows' count, and the table a statement creates."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.integration._pgml import MODEL, create_docs, expected_for, start_proxy, unique, warm_up
from tests.integration._stand_in import as_postgresql
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

MISSING = "no-such-org/no-such-model"
STAND_IN = "kinds.embed"
"""The stand-in, named as the call so that PostgreSQL names its columns alike."""


@pytest.fixture(scope="module")
def proxy(cluster: PostgresCluster) -> Iterator[ProxyProcess]:
    process = start_proxy(cluster, batch_size=7)
    warm_up(process.dsn())
    cluster.psql(
        "CREATE SCHEMA IF NOT EXISTS kinds; "
        f"CREATE OR REPLACE FUNCTION {STAND_IN}(text, text) RETURNS real[] "
        "LANGUAGE plpgsql VOLATILE AS $$ BEGIN RETURN ARRAY[length($2)::real]; END $$"
    )
    yield process
    process.stop()
    cluster.psql("DROP SCHEMA IF EXISTS kinds CASCADE")


@pytest.fixture
def docs(cluster: PostgresCluster) -> Iterator[str]:
    name = unique("kinds")
    create_docs(cluster, name)
    cluster.psql(f"ALTER TABLE {name} ADD COLUMN e real[]")
    yield name
    cluster.psql(f"DROP TABLE IF EXISTS {name}, {name}_made")


def _answer(conn: psycopg.Connection[Any], sql: str, *, binary: bool = False) -> tuple[Any, ...]:
    """The statement's tag, columns and row count, or its SQLSTATE (``binary``: through
    the extended protocol, as psycopg sends a statement whose rows it wants in binary)."""
    try:
        cur = conn.execute(sql, binary=binary)
    except psycopg.Error as error:
        return ("error", error.sqlstate)
    columns = [(d.name, d.type_code) for d in cur.description or []]
    count = len(cur.fetchall()) if cur.description else cur.rowcount
    return cur.statusmessage, columns, count


def _sides(
    cluster: PostgresCluster, proxy: ProxyProcess
) -> tuple[tuple[str, str], tuple[str, str]]:
    """PostgreSQL over the stand-in, and the proxy over the pgml function."""
    return (cluster.dsn(), STAND_IN), (proxy.dsn(), "pgml.embed")


def _made(conn: psycopg.Connection[Any], table: str) -> list[tuple[Any, ...]]:
    """The columns of a table a statement created, and its rows' count."""
    columns = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 ORDER BY attnum",
        [table],
    ).fetchall()
    (count,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone() or (0,)
    return [*columns, ("rows", count)]


SHAPES = [
    "SELECT count(*) FILTER (WHERE ({f}({m}, body))[1] > 0) AS n FROM {t}",
    "SELECT id, count(*) FILTER (WHERE {f}({m}, body) IS NOT NULL) FROM {t} GROUP BY id",
    # grouped by a call: by position, alias or the same expression, beside other keys
    # (a key true for every row, whichever function computes it: one group either way)
    "SELECT ({f}({m}, body) IS NOT NULL OR body IS NULL) AS known, count(*) FROM {t} GROUP BY 1",
    "SELECT ({f}({m}, body) IS NOT NULL OR body IS NULL) AS known, count(*) FROM {t} "
    "GROUP BY known ORDER BY known",
    "SELECT ({f}({m}, body) IS NOT NULL OR body IS NULL), count(*) FROM {t} "
    "GROUP BY ({f}({m}, body) IS NOT NULL OR body IS NULL)",
    "SELECT count(*) FROM {t} GROUP BY ({f}({m}, body) IS NOT NULL OR body IS NULL)",
    "SELECT id % 3 AS k, ({f}({m}, body) IS NOT NULL OR body IS NULL) AS known, max(id) "
    "FROM {t} WHERE id > 1 GROUP BY k, 2 HAVING count(*) > 0 ORDER BY k",
    "SELECT ({f}({m}, body))[1] > 0, count(*) FROM {t} GROUP BY ({f}({m}, body))[1] < 0",
    # HAVING over the groups' values: the groups filtered, then ordered and counted (the
    # arguments never NULL: the stand-in's value is not NULL for NULL, the model's is)
    "SELECT id % 3 AS k, count(*) FROM {t} GROUP BY k "
    "HAVING {f}({m}, coalesce(min(body), '')) IS NOT NULL AND count(*) > 1 ORDER BY k",
    "SELECT id, max(body) FROM {t} GROUP BY id HAVING array_length({f}({m}, "
    "coalesce(max(body), 'x')), 1) > 0 AND id % 2 = 0 ORDER BY id DESC LIMIT 2",
    "SELECT count(*) FROM {t} HAVING {f}({m}, string_agg(body, ' ')) IS NOT NULL",
    "SELECT id % 2 AS k, {f}({m}, coalesce(min(body), '')) IS NOT NULL AS known FROM {t} "
    "GROUP BY k HAVING {f}({m}, coalesce(max(body), '')) IS NOT NULL OR count(*) > 0 "
    "ORDER BY 1 OFFSET 1",
    # a subquery over the statement's WITH queries
    "WITH c AS (SELECT body FROM {t} WHERE id < 5) SELECT count(*) FROM (SELECT {f}({m}, body) "
    "AS e FROM c) AS s",
    "WITH c AS (SELECT id, body FROM {t} WHERE random() < 2), d AS (SELECT * FROM c WHERE "
    "id < 8) SELECT count(e) FROM (SELECT id, {f}({m}, body) AS e FROM d ORDER BY id) AS s",
    "WITH c AS (SELECT id, body FROM {t} WHERE id < 5) SELECT s.id FROM (WITH x AS (SELECT * "
    "FROM c) SELECT id, {f}({m}, body) AS e FROM x WHERE ({f}({m}, body))[1] IS NOT NULL) AS s",
    # a call in a WITH query over an earlier one
    "WITH c AS (SELECT id, body FROM {t} WHERE id < 5), d AS (SELECT id, {f}({m}, body) AS e "
    "FROM c), x AS (SELECT 1 AS one) SELECT count(e), max(one) FROM d, x",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
    "SELECT count(*) FROM (SELECT {f}({m}, 'n' || n) AS e FROM r) AS s",
    "WITH w AS (UPDATE {t} SET body = body WHERE id = 1 RETURNING id) "
    "SELECT count(e) FROM (SELECT {f}({m}, body) AS e FROM {t}) AS s",
    "INSERT INTO {t} (id, body, e) SELECT id + 1000, body, {f}({m}, body) FROM {t} RETURNING id",
    "INSERT INTO {t} (id, body, e) SELECT id + 1000, body, {f}({m}, body) FROM {t} "
    "ON CONFLICT DO NOTHING",
    "CREATE TABLE {t}_made AS SELECT id, {f}({m}, body) FROM {t}",
    "CREATE TABLE {t}_made AS SELECT id, {f}({m}, body) AS e FROM {t} WITH DATA",
    "SELECT id, {f}({m}, body) AS e INTO {t}_made FROM {t} WHERE id < 10",
    "SELECT id, {f}({m}, body) INTO UNLOGGED TABLE {t}_made FROM {t}",
    # a select list that begins with a subquery or a call of constants (which runs once
    # and is put in as a subquery of its value)
    "SELECT (SELECT max(id) FROM {t}) AS top, {f}({m}, body) IS NOT NULL FROM {t} WHERE id < 4",
    "SELECT {f}({m}, 'x') IS NOT NULL, {f}({m}, body) AS e FROM {t} WHERE id < 4",
    "SELECT ARRAY(SELECT id FROM {t} WHERE id < 3), {f}({m}, 'x'), {f}({m}, s.b) "
    "FROM (SELECT NULL::text AS b) AS s",
    # in a CASE branch or after COALESCE's first arguments: called where reached
    "SELECT id, CASE WHEN body IS NULL THEN NULL ELSE {f}({m}, body) END AS e FROM {t}",
    "SELECT id, coalesce(CASE WHEN id % 2 = 0 THEN ARRAY[1]::real[] END, {f}({m}, body)) "
    "FROM {t} ORDER BY id",
    "SELECT id, CASE id WHEN 1 THEN NULL WHEN 2 THEN {f}({m}, body) END FROM {t} WHERE id < 4",
    # an arm of a set operation, each arm's calls over its own rows
    "SELECT id, {f}({m}, body) AS e FROM {t} WHERE id < 3 UNION ALL SELECT 0, NULL ORDER BY 1",
    "SELECT 0, NULL::real[] UNION ALL SELECT id, {f}({m}, body) FROM {t} WHERE id < 3",
    "SELECT id, {f}({m}, body) FROM {t} WHERE id < 6 EXCEPT "
    "SELECT id, {f}({m}, body) FROM {t} WHERE id < 3 ORDER BY 1",
    "(SELECT id, {f}({m}, body) FROM {t} ORDER BY id DESC LIMIT 2) UNION "
    "(SELECT id, {f}({m}, body) FROM {t} ORDER BY id LIMIT 2) ORDER BY 1",
    # ordered by the call's value, counted after it
    "SELECT id, {f}({m}, body) AS e FROM {t} WHERE body IS NOT NULL ORDER BY e[1], id LIMIT 3",
    "SELECT id FROM {t} WHERE body IS NOT NULL ORDER BY ({f}({m}, body))[2] DESC LIMIT 2 OFFSET 1",
]


@pytest.mark.parametrize("mode", ["simple", "extended", "read only"])
def test_a_call_runs_only_where_postgresql_reaches_it(
    proxy: ProxyProcess, docs: str, mode: str
) -> None:
    """PostgreSQL evaluates a CASE branch only for the rows that take it, and COALESCE's
    arguments only up to the first that is not NULL: a call of a model that does not
    exist, where no row reaches it, is never made, so the statement answers its rows;
    where one row reaches it, it fails as the call does."""
    call = f"pgml.embed('{MISSING}', body)"
    reached_by_none = [
        f"SELECT id, CASE WHEN id < 0 THEN {call} END FROM {docs}",
        f"SELECT id, CASE WHEN body IS NULL THEN NULL WHEN id >= 0 THEN NULL ELSE {call} END "
        f"FROM {docs} ORDER BY id",
        f"SELECT id, coalesce(id::text, upper(body), ({call})::text) FROM {docs}",
        f"SELECT id, CASE id WHEN -1 THEN {call} END FROM {docs} WHERE id < 5",
        f"SELECT id, CASE WHEN id > 3 THEN CASE WHEN id < 2 THEN {call} END END FROM {docs}",
    ]
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        if mode == "read only":
            conn.execute("SET default_transaction_read_only = on")
        cursor = psycopg.ClientCursor(conn) if mode == "simple" else conn.cursor()
        (total,) = cursor.execute(f"SELECT count(*) FROM {docs}").fetchone() or (0,)
        for sql in reached_by_none:
            rows = cursor.execute(sql).fetchall()
            assert len(rows) == (4 if "id < 5" in sql else total), sql
            assert all(value in (None, str(key)) for key, value in rows), sql
        over = f"SELECT id, CASE WHEN id > %s THEN {call} END FROM {docs}"
        rows = cursor.execute(over, [10**6]).fetchall()  # a parameter in the condition
        assert len(rows) == total and all(value is None for _, value in rows)
        with pytest.raises(psycopg.Error, match="was not found"):
            cursor.execute(f"SELECT id, CASE WHEN id = 2 THEN {call} END FROM {docs}")


@pytest.mark.parametrize("shape", SHAPES)
def test_as_postgresql_runs_it(
    proxy: ProxyProcess, cluster: PostgresCluster, docs: str, shape: str
) -> None:
    def answer(dsn: str, function: str) -> Any:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DELETE FROM {docs} WHERE id >= 1000; DROP TABLE IF EXISTS {docs}_made")
            answer = _answer(conn, shape.format(f=function, m=f"'{MODEL}'", t=docs))
            return answer, _made(conn, f"{docs}_made") if "_made" in shape else []

    as_postgresql(answer, *_sides(cluster, proxy))


REFUSED = [
    "SELECT id, body, count(*) FROM {t} GROUP BY ({f}({m}, body))[1] > 0",
    "SELECT body FROM {t} GROUP BY ({f}({m}, body))[1] > 0",
    "SELECT ({f}({m}, body))[1] > 0, id FROM {t} GROUP BY 1",
    "SELECT id, count(*) FROM {t} WHERE ({f}({m}, body))[1] > 0 GROUP BY body",
    "SELECT DISTINCT ON (id) id, {f}({m}, body) FROM {t} ORDER BY body",
    "SELECT id FROM {t} WHERE ({f}({m}, body))[1] > 0 ORDER BY nosuch",
]


@pytest.mark.parametrize("shape", REFUSED)
def test_refused_as_postgresql_refuses_it(
    proxy: ProxyProcess, cluster: PostgresCluster, docs: str, shape: str
) -> None:
    """What PostgreSQL refuses before it runs a statement is refused with its own
    SQLSTATE, message and position, naming the client's columns (not the proxy's)."""

    def answer(dsn: str, function: str) -> Any:
        with psycopg.connect(dsn, autocommit=True) as conn:
            with pytest.raises(psycopg.Error) as refused:
                conn.execute(shape.format(f=function, m=f"'{MODEL}'", t=docs))
            return refused.value.sqlstate, refused.value.diag.message_primary

    as_postgresql(answer, *_sides(cluster, proxy))


def test_with_no_data_creates_the_table_and_runs_no_model(
    proxy: ProxyProcess, cluster: PostgresCluster, docs: str
) -> None:
    sql = "CREATE TABLE {t}_made AS SELECT id, {f}('{m}', body) AS e FROM {t} WITH NO DATA"

    def answer(dsn: str, function: str) -> Any:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {docs}_made")
            answer = _answer(conn, sql.format(f=function, m=MISSING, t=docs))
            return answer, _made(conn, f"{docs}_made")

    as_postgresql(answer, *_sides(cluster, proxy))


@pytest.mark.parametrize(
    ("sql", "refusal"),
    [
        (
            "WITH c AS (SELECT id, body FROM {t} WHERE id < 5) SELECT (SELECT count(*) FROM c), "
            "count(*) FROM (SELECT pgml.embed({m}, body) AS e FROM c) AS s",
            'over WITH query "c" that the statement also reads elsewhere',
        ),
        (
            "WITH c AS (INSERT INTO {t} (id, body) VALUES (1000, 'x') RETURNING body) "
            "SELECT count(*) FROM (SELECT pgml.embed({m}, body) AS e FROM c) AS s",
            'over WITH query "c", which changes rows',
        ),
    ],
)
def test_a_subquery_over_a_with_query_read_twice_or_writing_is_refused(
    proxy: ProxyProcess, docs: str, sql: str, refusal: str
) -> None:
    """Read once by PostgreSQL, such a WITH query would be read again where the calls'
    rows are produced: refused before anything runs."""
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as conn,
        pytest.raises(psycopg.errors.FeatureNotSupported, match=refusal),
    ):
        conn.execute(sql.format(t=docs, m=f"'{MODEL}'"))
        assert conn.execute(f"SELECT count(*) FROM {docs} WHERE id = 1000").fetchone() == (0,)


QUOTED_NAMES = [
    # select-list aliases alike but for case: ORDER BY and GROUP BY read the one named
    'SELECT id AS "E", {f}({m}, body) AS e FROM {t} ORDER BY "E" DESC',
    'SELECT id AS e, {f}({m}, body) AS "E" FROM {t} ORDER BY e DESC LIMIT 4',
    'SELECT id % 3 AS "K", ({f}({m}, body) IS NOT NULL OR body IS NULL) AS k, count(*) '
    'FROM {t} GROUP BY "K", k ORDER BY "K" DESC',
    # WITH queries alike but for case: a subquery over one reads that one, either order
    'WITH "C" AS (SELECT id, body FROM {t} WHERE id < 3), c AS (SELECT id, body FROM {t} '
    'WHERE id >= 3) SELECT s.id FROM (SELECT id, {f}({m}, body) AS e FROM "C") AS s ORDER BY 1',
    'WITH c AS (SELECT id, body FROM {t} WHERE id >= 3), "C" AS (SELECT id, body FROM {t} '
    "WHERE id < 3) SELECT s.id FROM (SELECT id, {f}({m}, body) AS e FROM c) AS s ORDER BY 1",
    # a FROM item's quoted alias, read by a call in a subquery
    'SELECT s.id FROM (SELECT "D".id, {f}({m}, "D".body) AS e FROM {t} AS "D") AS s ORDER BY 1',
]
"""Names PostgreSQL tells apart by case only where they are quoted."""


@pytest.mark.parametrize("shape", QUOTED_NAMES)
def test_quoted_names_alike_but_for_case_are_told_apart(
    proxy: ProxyProcess, cluster: PostgresCluster, docs: str, shape: str
) -> None:
    def answer(dsn: str, function: str) -> Any:
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute(shape.format(f=function, m=f"'{MODEL}'", t=docs))
            return [d.name for d in cur.description or []], [row[0] for row in cur.fetchall()]

    as_postgresql(answer, *_sides(cluster, proxy))


MERGES = [
    "MERGE INTO {t} d USING (SELECT 2 AS id, 'z' AS body) s ON d.id = s.id "
    "WHEN MATCHED THEN UPDATE SET e = {f}({m}, s.body)",
    "MERGE INTO {t} AS d USING {t} AS s ON d.id = s.id AND s.id < 5 "
    "WHEN MATCHED AND {f}({m}, coalesce(s.body, '')) IS NOT NULL THEN UPDATE SET e = {f}({m}, "
    "coalesce(s.body, '') || '!') WHEN NOT MATCHED THEN INSERT (id, body, e) "
    "VALUES (s.id + 1000, s.body, {f}({m}, coalesce(s.body, '')))",
    "MERGE INTO {t} USING (SELECT id + 2000 AS id, body FROM {t} WHERE id < 4) AS src "
    "ON {t}.id = src.id WHEN NOT MATCHED THEN INSERT (id, body, e) VALUES (src.id, body, "
    "{f}({m}, coalesce(body, '')))",
]
"""MERGE whose actions call the function over the source's rows, one after another (the
arguments never NULL: the stand-in's value is not NULL for NULL, the model's is)."""


def test_merge_actions_over_the_source_as_postgresql_runs_them(
    proxy: ProxyProcess, cluster: PostgresCluster, docs: str
) -> None:
    """Each MERGE's tag and the rows it leaves (which have a value), as PostgreSQL's over
    the stand-in; through the proxy the values are the model's."""

    def answer(dsn: str, function: str) -> Any:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DELETE FROM {docs} WHERE id >= 1000; UPDATE {docs} SET e = NULL")
            found = [_answer(conn, m.format(f=function, m=f"'{MODEL}'", t=docs)) for m in MERGES]
            rows = conn.execute(f"SELECT id, e IS NOT NULL FROM {docs} ORDER BY id").fetchall()
            return found, rows

    as_postgresql(answer, *_sides(cluster, proxy))
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        [(value, body)] = conn.execute(f"SELECT e, body FROM {docs} WHERE id = 2003").fetchall()
        [(alone,)] = conn.execute(f"SELECT pgml.embed('{MODEL}', %s)", [body]).fetchall()
        assert max(abs(a - b) for a, b in zip(value, alone, strict=True)) < 1e-5


def test_merge_actions_over_the_target_are_refused_with_the_way_that_works(
    proxy: ProxyProcess, docs: str
) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
            conn.execute(
                f"MERGE INTO {docs} d USING (SELECT 2 AS id) s ON d.id = s.id "
                f"WHEN MATCHED THEN UPDATE SET e = pgml.embed('{MODEL}', d.body)"
            )
        assert "target's row" in str(refused.value)
        conn.execute(  # the hint's way: the values computed in the source
            f"MERGE INTO {docs} d USING (SELECT id, pgml.embed('{MODEL}', body) AS v "
            f"FROM {docs} WHERE id = 2) s ON d.id = s.id WHEN MATCHED THEN UPDATE SET e = s.v"
        )
        (length,) = conn.execute(f"SELECT array_length(e, 1) FROM {docs} WHERE id = 2").fetchone()
        assert length == 384


PREPARED = [
    "PREPARE {p}(int) AS SELECT id, {f}({m}, body) AS e FROM {t} WHERE id < $1 ORDER BY id",
    "SELECT name, parameter_types::text FROM pg_prepared_statements WHERE name = '{p}'",
    "EXECUTE {p}(4)",
    "EXECUTE {p} (2 + 1) -- a comment",
    "execute {p}(4);",
    "EXECUTE {p}",
    "EXECUTE {p}(1, 2)",
    "EXECUTE {p}('x')",
    "EXECUTE {p}()",
    "EXECUTE {p}(1) AS int",
    "EXECUTE {p}(1",
    "PREPARE {p} AS SELECT 1",
    "PREPARE {p}_w(int, text) AS INSERT INTO {t} (id, body, e) "
    "SELECT id + $1, body || $2, {f}({m}, body) FROM {t} WHERE id < 4",
    "EXECUTE {p}_w(1000, 'x')",
    "SELECT count(*) FROM {t} WHERE id >= 1000",
    "DEALLOCATE {p}",
    "EXECUTE {p}(4)",
    "PREPARE {p}(int) AS SELECT $1 + 1",
    "EXECUTE {p}(4)",
    "DISCARD ALL",
    "EXECUTE {p}_w(2000, 'y')",
    "SELECT count(*) FROM pg_prepared_statements",
]
"""SQL-level PREPARE and EXECUTE, in this order in one session; the statement of a name
deallocated and prepared again without a call is PostgreSQL's own."""


@pytest.mark.parametrize("extended", [False, True], ids=["simple", "extended"])
def test_sql_prepare_and_execute_as_postgresql_runs_them(
    proxy: ProxyProcess, cluster: PostgresCluster, docs: str, extended: bool
) -> None:
    def answer(dsn: str, function: str) -> Any:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DELETE FROM {docs} WHERE id >= 1000")
            answer: list[Any] = []
            for sql in PREPARED:
                statement = sql.format(p="kinds_p", f=function, m=f"'{MODEL}'", t=docs)
                found = _answer(conn, statement, binary=extended)
                answer.append((statement.split("(")[0], found))
                if statement.startswith("SELECT"):
                    answer.append(("values", conn.execute(statement).fetchall()))
            return answer

    as_postgresql(answer, *_sides(cluster, proxy))


def test_an_execute_the_proxy_would_not_run_is_refused(proxy: ProxyProcess, docs: str) -> None:
    """Inside another statement PostgreSQL would run the statement's skeleton (its calls
    as NULLs): refused, and nothing is written."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute(
            f"PREPARE kinds_q(int) AS SELECT id, pgml.embed('{MODEL}', body) AS e "
            f"FROM {docs} WHERE id < $1"
        )
        for sql in (
            "CREATE TABLE kinds_made AS EXECUTE kinds_q(3)",
            "EXPLAIN (ANALYZE) EXECUTE kinds_q(3)",
            "EXECUTE kinds_q(3); SELECT 1",
        ):
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                conn.execute(sql)
        for explain in ("EXPLAIN EXECUTE kinds_q(3)", "EXPLAIN (ANALYZE false) EXECUTE kinds_q(3)"):
            plan = conn.execute(explain).fetchall()
            assert plan and docs in str(plan)  # PostgreSQL's plan; nothing runs
        assert conn.execute("SELECT to_regclass('kinds_made')").fetchone() == (None,)
        assert len(conn.execute("EXECUTE kinds_q(3)").fetchall()) == 2
        # the words inside a string or a comment are not a statement
        found = conn.execute("SELECT 'EXECUTE kinds_q(3)' /* EXECUTE kinds_q(3) */").fetchall()
        assert found == [("EXECUTE kinds_q(3)",)]


def test_an_execute_through_the_extended_protocol_as_postgresql_runs_it(
    proxy: ProxyProcess, cluster: PostgresCluster, docs: str
) -> None:
    """``EXECUTE name(...)`` through the extended protocol, as a driver prepares it or asks
    for binary rows: described and run as PostgreSQL runs it (tags, columns, rows,
    errors, the driver's parameters among them); through the proxy each value is the
    model's for its row."""

    def answer(dsn: str, function: str) -> Any:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                f"PREPARE kinds_e(int, text) AS SELECT id, {function}('{MODEL}', body || $2) "
                f"AS e FROM {docs} WHERE id < $1 ORDER BY id"
            )
            found = []
            for sql, params, options in (
                ("EXECUTE kinds_e(4, '!')", None, {"prepare": True}),
                ("EXECUTE kinds_e(4, '!')", None, {"prepare": True}),
                ("EXECUTE kinds_e(2 + 1, '?')", None, {"binary": True}),
                ("EXECUTE kinds_e(1)", None, {"binary": True}),  # 42601: parameters' count
                ("EXECUTE kinds_e(%s, %s)", [1, "."], {}),  # 42P18: PostgreSQL's, as it is
            ):
                try:
                    cur = conn.execute(sql, params, **options)  # type: ignore[call-overload]
                except psycopg.Error as error:
                    found.append((sql, error.sqlstate))
                    continue
                described = [(d.name, d.type_code) for d in cur.description or []]
                rows = cur.fetchall()
                found.append((cur.statusmessage, described, [row[0] for row in rows]))
                if function == "pgml.embed":
                    first, value = rows[0]
                    [(body,)] = conn.execute(f"SELECT body FROM {docs} WHERE id = %s", [first])
                    suffix = sql.split("'")[1]
                    [(alone,)] = conn.execute(f"SELECT pgml.embed('{MODEL}', %s)", [body + suffix])
                    assert max(abs(a - b) for a, b in zip(value, alone, strict=True)) < 1e-5
            conn.execute("DEALLOCATE kinds_e")
            return found

    found = as_postgresql(answer, *_sides(cluster, proxy))
    assert [len(f[2]) for f in found[:3]] == [3, 3, 2], found
    assert [f[1] for f in found[3:]] == ["42601", "42P18"], found


def test_a_prepared_call_takes_the_overload_of_its_declared_types(proxy: ProxyProcess) -> None:
    """``$1`` declared ``text[]``: EXECUTE runs the array overload, with the rows of the
    same statement written out, and PREPARE gave PostgreSQL the result type EXECUTE
    describes."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute(f"PREPARE kinds_a(text[]) AS SELECT pgml.embed('{MODEL}', $1) AS e")
        (declared,) = conn.execute(
            "SELECT result_types::text FROM pg_prepared_statements WHERE name = 'kinds_a'"
        ).fetchone() or (None,)
        cursor = conn.execute("EXECUTE kinds_a(ARRAY['one', 'two'])")
        executed = cursor.fetchall()
        direct = conn.execute(f"SELECT pgml.embed('{MODEL}', ARRAY['one', 'two']) AS e").fetchall()
        assert executed == direct and len(executed) == 2  # a row per text
        (described,) = conn.execute(
            "SELECT format_type(%s, NULL)", [(cursor.description or [])[0].type_code]
        ).fetchone() or (None,)
        assert declared == "{" + str(described) + "}"


LOCKING = [
    # the queue pattern: each worker takes the next rows that pass, skipping taken ones
    "SELECT id FROM {t} WHERE ({f}({m}, body))[1] IS NOT NULL AND id >= 8 ORDER BY id "
    "LIMIT 3 FOR UPDATE SKIP LOCKED",
    # a call in ORDER BY, the locking clause before LIMIT
    "SELECT id FROM {t} WHERE id < 30 ORDER BY ({f}({m}, body))[1] IS NULL, id "
    "FOR NO KEY UPDATE SKIP LOCKED LIMIT 4",
    # shared locks on one table of a join; the other's rows stay free
    "SELECT d.id, n.id FROM {t} d JOIN {t} n ON n.id = d.id + 1 "
    "WHERE ({f}({m}, d.body))[1] IS NOT NULL AND d.id BETWEEN 5 AND 12 ORDER BY d.id "
    "FOR SHARE OF d",
]


@pytest.mark.parametrize("shape", LOCKING)
def test_locks_the_rows_postgresql_locks(
    proxy: ProxyProcess, cluster: PostgresCluster, docs: str, shape: str
) -> None:
    """Two workers run the statement in turn, each in its own open transaction: the rows
    each gets, which rows are locked then, and a third worker's NOWAIT are PostgreSQL's
    (the calls' conditions decide which rows are locked, not only the rest of WHERE)."""

    def answer(dsn: str, function: str) -> Any:
        sql = shape.format(f=function, m=f"'{MODEL}'", t=docs)
        with (
            psycopg.connect(dsn) as first,
            psycopg.connect(dsn) as second,
            psycopg.connect(dsn, autocommit=True) as third,
            psycopg.connect(cluster.dsn(), autocommit=True) as probe,
        ):
            taken = [conn.execute(sql).fetchall() for conn in (first, second)]
            free = probe.execute(f"SELECT id FROM {docs} FOR UPDATE SKIP LOCKED").fetchall()
            try:
                third.execute(sql.replace("SKIP LOCKED", "NOWAIT")).fetchall()
                waited = "ok"
            except psycopg.Error as error:
                waited = str(error.sqlstate)
            locked = sorted(set(range(1, 61)) - {row[0] for row in free})
            return taken, locked, waited

    _, locked, _ = as_postgresql(answer, *_sides(cluster, proxy))
    assert locked, "the statement locked no row"


UPSERTS = [
    (
        "INSERT INTO {t} (id, body) VALUES (1, 'new one'), (1000, 'fresh') ON CONFLICT (id) "
        "DO UPDATE SET body = excluded.body, e = {f}({m}, excluded.body)",
        {1: "new one"},
    ),
    # the condition reads the call too; a NULL body proposed for row 2 updates nothing
    (
        "INSERT INTO {t} AS d (id, body) VALUES (2, NULL), (3, 'three') ON CONFLICT (id) "
        "DO UPDATE SET e = {f}({m}, excluded.body) "
        "WHERE ({f}({m}, excluded.body))[1] IS NOT NULL AND d.id > 0",
        {3: "three"},
    ),
    (
        "WITH s AS (SELECT id, upper(body) AS b FROM {t} WHERE id < 3) "
        "INSERT INTO {t} (id, body) SELECT id, b FROM s ON CONFLICT (id) "
        "DO UPDATE SET e = {f}({m}, excluded.body || '!') RETURNING id, body",
        {1: "SENTENCE 1!", 2: "SENTENCE 2!"},
    ),
    # a key proposed twice: PostgreSQL refuses to affect a row a second time (21000)
    (
        "INSERT INTO {t} (id, body) VALUES (7, 'a'), (7, 'b') ON CONFLICT (id) "
        "DO UPDATE SET e = {f}({m}, excluded.body)",
        {},
    ),
]


@pytest.mark.parametrize(("shape", "embedded"), UPSERTS)
def test_an_upsert_over_the_proposed_row_as_postgresql_runs_it(
    proxy: ProxyProcess, cluster: PostgresCluster, docs: str, shape: str, embedded: dict[int, str]
) -> None:
    """``ON CONFLICT DO UPDATE SET e = pgml.embed(m, excluded.body)``: the tag, the rows
    returned and the table afterwards (which rows have a value) are PostgreSQL's for a
    stand-in; through the proxy each value is the model's for the row's body."""

    def answer(dsn: str, function: str) -> Any:
        cluster.psql(
            f"UPDATE {docs} SET e = NULL, body = 'sentence ' || id; "
            f"DELETE FROM {docs} WHERE id >= 1000"
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            try:
                cur = conn.execute(shape.format(f=function, m=f"'{MODEL}'", t=docs))
                answer: Any = (cur.statusmessage, cur.fetchall() if cur.description else None)
            except psycopg.Error as error:
                answer = error.sqlstate
            table = conn.execute(
                f"SELECT id, body, e IS NOT NULL FROM {docs} WHERE e IS NOT NULL OR id >= 1000 "
                "OR id < 10 ORDER BY id"
            ).fetchall()
            return answer, table

    as_postgresql(answer, *_sides(cluster, proxy))
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        stored = dict(conn.execute(f"SELECT id, e FROM {docs} WHERE e IS NOT NULL").fetchall())
        assert sorted(stored) == sorted(embedded)
        for key, text in embedded.items():
            row = conn.execute(f"SELECT pgml.embed('{MODEL}', %s)", [text]).fetchone()
            assert row is not None
            assert max(abs(a - b) for a, b in zip(stored[key], row[0], strict=True)) < 1e-5


@pytest.mark.parametrize(
    ("sql", "refusal"),
    [
        (
            "INSERT INTO {t} (id, body) VALUES (1, 'x') ON CONFLICT (id) "
            "DO UPDATE SET e = pgml.embed({m}, body)",
            "reads columns outside of a query",
        ),
        (
            "INSERT INTO {t} (id, body) VALUES (1, 'x') ON CONFLICT ON CONSTRAINT {t}_pkey "
            "DO UPDATE SET e = pgml.embed({m}, excluded.body)",
            "name the key's columns",
        ),
        (
            "INSERT INTO {t} VALUES (1, 'x') ON CONFLICT (id) "
            "DO UPDATE SET e = pgml.embed({m}, excluded.body)",
            "column list",
        ),
        (
            "INSERT INTO {t} (id, body) VALUES (1, 'x') ON CONFLICT (id) "
            "DO UPDATE SET e = pgml.embed({m}, excluded.cat)",
            "does not name",
        ),
    ],
)
def test_an_upsert_the_proxy_cannot_evaluate_is_refused_with_the_way_that_works(
    proxy: ProxyProcess, docs: str, sql: str, refusal: str
) -> None:
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as conn,
        pytest.raises(psycopg.errors.FeatureNotSupported, match=refusal),
    ):
        conn.execute(sql.format(t=docs, m=f"'{MODEL}'"))


def test_having_filters_the_groups_by_the_model_s_value(proxy: ProxyProcess, docs: str) -> None:
    """A call in HAVING is evaluated once for each group, over the group's values, and
    keeps the groups PostgreSQL would keep with those values: each group's embedding
    computed alone decides (the bound between them, so that some are kept and some
    not); beside DISTINCT or a window function it is refused."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        groups = conn.execute(
            f"SELECT id % 7, min(body) FROM {docs} GROUP BY 1 ORDER BY 1"
        ).fetchall()
        firsts = sorted((expected_for(body) or [0.0])[0] for _, body in groups)
        bound = (firsts[2] + firsts[3]) / 2
        kept = conn.execute(
            f"SELECT id %% 7, min(body) FROM {docs} GROUP BY 1 "
            f"HAVING (pgml.embed('{MODEL}', min(body)))[1] > %s ORDER BY 1",
            [bound],
        ).fetchall()
        expected = [g for g in groups if (expected_for(g[1]) or [0.0])[0] > bound]
        assert kept == expected and 0 < len(kept) < len(groups)
        for refused in (
            f"SELECT DISTINCT cat FROM {docs} GROUP BY cat "
            f"HAVING pgml.embed('{MODEL}', min(body)) IS NOT NULL",
            f"SELECT cat, rank() OVER (ORDER BY cat) FROM {docs} GROUP BY cat "
            f"HAVING pgml.embed('{MODEL}', min(body)) IS NOT NULL",
        ):
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="HAVING"):
                conn.execute(refused)
