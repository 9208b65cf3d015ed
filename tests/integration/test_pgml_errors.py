"""Wrong pgml calls and calls in places the proxy cannot evaluate: each gives a clear
PostgreSQL error with a fitting SQLSTATE, the data stays as it was, and the session
stays usable, for plain and for pgml statements."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.pq import TransactionStatus

from tests.integration._pgml import (
    MODEL,
    REAL_ARRAY_OID,
    Reference,
    assert_close,
    client,
    create_docs,
    doc_rows,
    expected_for,
    pgml_temp_tables,
    psql,
    start_proxy,
    unique,
    warm_up,
)
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

UNKNOWN_MODEL = "no-such-org/no-such-model"


@pytest.fixture(scope="module")
def pgml_proxy(cluster: PostgresCluster) -> Iterator[ProxyProcess]:
    """Batches of 8 rows, so that a long statement has many points to stop at."""
    process = start_proxy(cluster, batch_size=8)
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
    """A ClientCursor connection, closed before the tables of the test are dropped."""
    with client(pgml_proxy.dsn()) as connection:
        yield connection
        with contextlib.suppress(psycopg.Error):
            connection.rollback()


def snapshot(direct: psycopg.Connection[Any], table: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in direct.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()]


def assert_usable(conn: psycopg.Connection[Any]) -> None:
    """The session answers plain and pgml statements, and holds no helper tables."""
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert conn.execute("SELECT 1").fetchone() == (1,)
    row = conn.execute(f"SELECT pgml.embed('{MODEL}', 'still usable') AS e").fetchone()
    assert row is not None
    assert_close(row[0], Reference.one("still usable"))
    assert pgml_temp_tables(conn) == 0


def expect_error(
    conn: psycopg.Connection[Any], sql: str, sqlstate: str, *message_parts: str
) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as raised:
        conn.execute(sql)
    error = raised.value
    assert error.sqlstate == sqlstate, f"{error.sqlstate}: {error}"
    message = error.diag.message_primary or ""
    for part in message_parts:
        assert part in message, message
    assert "Traceback" not in str(error)
    return error


# --- arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "sqlstate", "part"),
    [
        ("pgml.embed('{m}')", "42883", "pgml.embed"),
        ("pgml.embed()", "42883", "pgml.embed"),
        ("pgml.embed('{m}', 'x', '{{}}', 'extra')", "42883", "pgml.embed"),
        ("pgml.version(1)", "42883", "pgml.version"),
    ],
    ids=["too-few", "none", "too-many", "version-with-one"],
)
def test_wrong_argument_count(
    conn: psycopg.Connection[Any], call: str, sqlstate: str, part: str
) -> None:
    expect_error(conn, f"SELECT {call.format(m=MODEL)}", sqlstate, part)
    assert_usable(conn)


@pytest.mark.parametrize(
    ("sql", "part"),
    [
        ("SELECT pgml.embed(1, 2)", "pgml.embed(integer, integer)"),
        ("SELECT pgml.embed('{m}', true)", "boolean"),
        ("SELECT pgml.embed('{m}', ARRAY[1, 2])", "integer[]"),
        ("SELECT pgml.embed('{m}', id) FROM {t}", "pgml.embed(text, integer)"),
    ],
    ids=["integers", "boolean", "integer-array", "integer-column"],
)
def test_wrong_argument_type(conn: psycopg.Connection[Any], docs: str, sql: str, part: str) -> None:
    error = expect_error(conn, sql.format(m=MODEL, t=docs), "42883", part, "does not exist")
    assert error.diag.message_hint is not None
    assert "pgml.embed(transformer text, text text" in error.diag.message_hint
    assert_usable(conn)


def test_unknown_named_argument(conn: psycopg.Connection[Any]) -> None:
    expect_error(conn, f"SELECT pgml.embed(transformer => '{MODEL}', txt => 'x')", "42883", "txt")
    assert_usable(conn)


def test_positional_argument_after_named_argument(conn: psycopg.Connection[Any]) -> None:
    expect_error(
        conn,
        f"SELECT pgml.embed(transformer => '{MODEL}', 'x')",
        "42601",
        "positional argument cannot follow named argument",
    )
    assert_usable(conn)


def test_positional_then_named_arguments_work(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(f"SELECT pgml.embed('{MODEL}', text => 'mixed')").fetchone()
    assert row is not None
    assert_close(row[0], Reference.one("mixed"))


@pytest.mark.parametrize(
    "call",
    [
        "pgml.embed(NULL, 'x')",
        "pgml.embed('{m}', NULL)",
        "pgml.embed('{m}', NULL::text)",
        "pgml.embed('{m}', 'x', NULL)",
        "pgml.embed(NULL::text, NULL::text, NULL::jsonb)",
        "pgml.embed(transformer => '{m}', text => NULL)",
    ],
)
def test_null_arguments_give_null(conn: psycopg.Connection[Any], call: str) -> None:
    cur = conn.execute(f"SELECT {call.format(m=MODEL)} AS e")
    assert cur.fetchall() == [(None,)]
    assert cur.description is not None
    assert cur.description[0].type_code == REAL_ARRAY_OID
    assert_usable(conn)


def test_null_arguments_read_from_columns_give_null(
    conn: psycopg.Connection[Any], docs: str
) -> None:
    rows = conn.execute(
        f"SELECT id, pgml.embed(NULLIF(model, model), body) AS a, "
        f"pgml.embed(model, body, NULL) AS b FROM {docs} ORDER BY id"
    ).fetchall()
    assert len(rows) == len(doc_rows())
    assert all(a is None and b is None for _, a, b in rows)


def test_null_array_gives_no_rows(conn: psycopg.Connection[Any]) -> None:
    cur = conn.execute(f"SELECT * FROM pgml.embed('{MODEL}', NULL::text[])")
    assert cur.fetchall() == []
    assert cur.statusmessage == "SELECT 0"


# --- models and kwargs -------------------------------------------------------------------


def test_unknown_model_names_the_places_looked_in(conn: psycopg.Connection[Any]) -> None:
    error = expect_error(conn, f"SELECT pgml.embed('{UNKNOWN_MODEL}', 'x')", "42704", UNKNOWN_MODEL)
    detail = error.diag.message_detail or ""
    for place in ("models folder", "Hugging Face cache", "Hugging Face hub"):
        assert place in detail, detail
    assert_usable(conn)


def test_unknown_model_read_from_a_column_leaves_the_data_unchanged(
    conn: psycopg.Connection[Any], docs: str, direct: psycopg.Connection[Any]
) -> None:
    conn.execute(f"UPDATE {docs} SET model = '{UNKNOWN_MODEL}' WHERE id = 7")
    before = snapshot(direct, docs)
    expect_error(conn, f"UPDATE {docs} SET emb = pgml.embed(model, body)", "42704")
    assert snapshot(direct, docs) == before
    assert_usable(conn)


@pytest.mark.parametrize(
    ("kwargs", "sqlstate"),
    [
        ("'{{bad'", "22P02"),
        ("'{{bad'::jsonb", "22P02"),
        ("'''); DROP TABLE {t}; --'", "22P02"),
        ("'[1]'", "22023"),
        ("'{{\"foo\": 1}}'", "22023"),
        ('\'{{"normalize": "yes"}}\'', "22023"),
        ("'{{\"max_length\": 0}}'", "22023"),
    ],
    ids=[
        "malformed",
        "malformed-jsonb",
        "injection",
        "not-an-object",
        "unknown-key",
        "normalize-not-boolean",
        "max-length-zero",
    ],
)
def test_bad_kwargs(
    conn: psycopg.Connection[Any],
    docs: str,
    direct: psycopg.Connection[Any],
    kwargs: str,
    sqlstate: str,
) -> None:
    before = snapshot(direct, docs)
    value = kwargs.format(t=docs)
    expect_error(conn, f"SELECT pgml.embed('{MODEL}', 'x', {value})", sqlstate)
    assert_usable(conn)
    expect_error(conn, f"UPDATE {docs} SET emb = pgml.embed(model, body, {value})", sqlstate)
    assert_usable(conn)
    assert snapshot(direct, docs) == before


# --- injection and awkward names ---------------------------------------------------------

INJECTIONS = [
    "'); DROP TABLE {t}; --",
    '"); DROP TABLE {t}; --',
    "$$; DROP TABLE {t}; $$",
    '{{"a": 1}}, {{}}, NULL, \\N \\\\',
    "naïve ✓ text\twith a tab",
]


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_in_the_text_argument(
    conn: psycopg.Connection[Any], docs: str, direct: psycopg.Connection[Any], text: str
) -> None:
    before = snapshot(direct, docs)
    value = text.format(t=docs)
    literal = value.replace("'", "''")
    row = conn.execute(f"SELECT pgml.embed('{MODEL}', '{literal}') AS e").fetchone()
    assert row is not None
    assert_close(row[0], Reference.one(value))
    conn.execute(f"UPDATE {docs} SET body = '{literal}' WHERE id = 1")
    rows = conn.execute(
        f"SELECT id, pgml.embed(model, body) AS e FROM {docs} WHERE id <= 2 ORDER BY id"
    ).fetchall()
    assert_close(rows[0][1], Reference.one(value))
    assert_close(rows[1][1], expected_for(doc_rows()[1][1]))
    after = snapshot(direct, docs)
    assert len(after) == len(before)
    assert after[1:] == before[1:]


def test_injection_in_the_model_argument(
    conn: psycopg.Connection[Any], docs: str, direct: psycopg.Connection[Any]
) -> None:
    before = snapshot(direct, docs)
    name = f"'); DROP TABLE {docs}; --"
    literal = name.replace("'", "''")
    expect_error(conn, f"SELECT pgml.embed('{literal}', 'x')", "42704", name)
    assert_usable(conn)
    conn.execute(f"UPDATE {docs} SET model = '{literal}' WHERE id = 3")
    expect_error(conn, f"SELECT pgml.embed(model, body) FROM {docs}", "42704", name)
    assert_usable(conn)
    after = snapshot(direct, docs)
    assert len(after) == len(before)


def test_dollar_quoted_and_escaped_literals(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        f"SELECT pgml.embed('{MODEL}', $q$it's $$ quoted$q$) AS a, "
        f"pgml.embed('{MODEL}', E'line\\none') AS b, "
        f"pgml.embed($m${MODEL}$m$, U&'caf\\00e9') AS c"
    ).fetchone()
    assert row is not None
    assert_close(row[0], Reference.one("it's $$ quoted"))
    assert_close(row[1], Reference.one("line\none"))
    assert_close(row[2], Reference.one("café"))


def test_quotes_and_dots_in_table_and_column_names(
    conn: psycopg.Connection[Any], scratch: Callable[[str], str], direct: psycopg.Connection[Any]
) -> None:
    table = scratch('we"ird.tab')
    quoted = '"' + table.replace('"', '""') + '"'
    values = [f"'); DROP TABLE {quoted}; --", 'a "quoted" {text}', None]
    direct.execute(f'CREATE TABLE {quoted} (id int, "we""ird.col" text)')
    with direct.cursor() as cur:
        for i, value in enumerate(values, start=1):
            cur.execute(f"INSERT INTO {quoted} VALUES (%s, %s)", (i, value))
    before = snapshot(direct, quoted)
    cur = conn.execute(
        f'SELECT w.id, pgml.embed(\'{MODEL}\', w."we""ird.col") AS "o""ut.x" '
        f"FROM {quoted} AS w ORDER BY w.id"
    )
    assert cur.description is not None
    assert [d.name for d in cur.description] == ["id", 'o"ut.x']
    rows = cur.fetchall()
    assert [r[0] for r in rows] == [1, 2, 3]
    for (_, vector), value in zip(rows, values, strict=True):
        assert_close(vector, None if value is None else Reference.one(value))
    conn.execute(
        f'UPDATE {quoted} SET "we""ird.col" = pgml.embed(\'{MODEL}\', "we""ird.col")::text'
    )
    after = snapshot(direct, quoted)
    assert len(after) == len(before) == 3
    assert after[2] == (3, None)


# --- statements the proxy cannot run -------------------------------------------------------


def test_unparseable_statement_with_a_pgml_call(conn: psycopg.Connection[Any]) -> None:
    expect_error(conn, f"SELECT pgml.embed('{MODEL}', 'x') FROM FROM", "42601")
    expect_error(conn, f"SELECT pgml.embed('{MODEL}', 'x'", "42601")
    assert_usable(conn)


UNSUPPORTED = {
    "returning-insert": (
        "INSERT INTO {t} (id, body, cat) VALUES (999, 'x', 'c') RETURNING pgml.embed('{m}', body)"
    ),
    "returning-update": "UPDATE {t} SET cat = 'changed' RETURNING id, pgml.embed('{m}', body)",
    "returning-delete": "DELETE FROM {t} WHERE id < 3 RETURNING pgml.embed('{m}', 'x')",
    "join-on": (
        "SELECT count(*) FROM {t} AS a JOIN {t} AS b ON (pgml.embed('{m}', a.body))[1] = (b.emb)[1]"
    ),
    "correlated-qualified": (
        "SELECT id, (SELECT pgml.embed('{m}', {t}.body) FROM {t} AS x LIMIT 1) FROM {t}"
    ),
    "correlated-unqualified": (
        "SELECT id, (SELECT count(*) FROM pg_class "
        "WHERE pgml.embed('{m}', body) IS NOT NULL) FROM {t}"
    ),
    "function-dollar-body": (
        "CREATE FUNCTION {f}(x text) RETURNS real[] LANGUAGE sql "
        "AS $$ SELECT pgml.embed('{m}', x) $$"
    ),
    "function-string-body": (
        "CREATE FUNCTION {f}(x text) RETURNS real[] LANGUAGE sql AS 'SELECT pgml.embed(''{m}'', x)'"
    ),
    "function-atomic-body": (
        "CREATE FUNCTION {f}(x text) RETURNS real[] LANGUAGE sql "
        "BEGIN ATOMIC SELECT pgml.embed('{m}', x); END"
    ),
    "do-block": "DO $$ BEGIN PERFORM pgml.embed('{m}', 'x'); END $$",
    "do-block-tagged": "DO $body$ BEGIN PERFORM PGML.Embed('{m}', 'x'); END $body$",
    "view-reading-columns": "CREATE VIEW {f} AS SELECT id, pgml.embed('{m}', body) AS e FROM {t}",
    "view-constant": "CREATE VIEW {f} AS SELECT pgml.embed('{m}', 'x') AS e",
}


@pytest.mark.parametrize("sql", list(UNSUPPORTED.values()), ids=list(UNSUPPORTED))
def test_unsupported_places_are_refused(
    conn: psycopg.Connection[Any], docs: str, direct: psycopg.Connection[Any], sql: str
) -> None:
    before = snapshot(direct, docs)
    name = unique("pgml_obj")
    error = expect_error(conn, sql.format(m=MODEL, t=docs, f=name), "0A000")
    assert error.diag.message_hint, "a refusal names a rewrite that works"
    assert snapshot(direct, docs) == before
    created = direct.execute("SELECT count(*) FROM pg_proc WHERE proname = %s", (name,)).fetchone()
    assert created == (0,)
    assert direct.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (None,)
    assert_usable(conn)


# --- errors from PostgreSQL while the proxy runs a statement -----------------------------


@pytest.mark.parametrize(
    ("sql", "sqlstate"),
    [
        ("SELECT pgml.embed('{m}', nosuch) FROM {t}", "42703"),
        ("SELECT pgml.embed('{m}', body) FROM {t}_missing", "42P01"),
        ("SELECT 1 / (id - id), pgml.embed('{m}', body) FROM {t}", "22012"),
        ("SELECT pgml.embed('{m}', body || (1 / (id - id))::text) FROM {t}", "22012"),
        (
            "INSERT INTO {t} (id, body, cat, emb) "
            "SELECT id, body, cat, pgml.embed('{m}', body) FROM {t}",
            "23505",
        ),
        ("UPDATE {t} SET id = 1, emb = pgml.embed('{m}', body) WHERE id < 3", "23505"),
    ],
    ids=[
        "missing-column",
        "missing-table",
        "error-in-final-statement",
        "error-reading-arguments",
        "unique-violation-insert",
        "unique-violation-update",
    ],
)
def test_postgres_errors_leave_data_and_session_intact(
    conn: psycopg.Connection[Any],
    docs: str,
    direct: psycopg.Connection[Any],
    sql: str,
    sqlstate: str,
) -> None:
    before = snapshot(direct, docs)
    expect_error(conn, sql.format(m=MODEL, t=docs), sqlstate)
    assert snapshot(direct, docs) == before
    assert_usable(conn)


# --- transactions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failing",
    [
        f"SELECT pgml.embed('{UNKNOWN_MODEL}', body) FROM {{t}}",
        "SELECT pgml.embed(1, 2)",
        "INSERT INTO {t} (id) VALUES (998) RETURNING pgml.embed('{m}', 'x')",
        "SELECT pgml.embed('{m}', body, '{{bad') FROM {t}",
    ],
    ids=["unknown-model", "wrong-types", "refused-place", "bad-json"],
)
def test_error_inside_a_transaction_then_rollback(
    conn: psycopg.Connection[Any], docs: str, direct: psycopg.Connection[Any], failing: str
) -> None:
    before = snapshot(direct, docs)
    conn.execute("BEGIN")
    conn.execute(f"INSERT INTO {docs} (id, body, cat) VALUES (997, 'in transaction', 'c9')")
    with pytest.raises(psycopg.Error):
        conn.execute(failing.format(m=MODEL, t=docs))
    assert conn.info.transaction_status == TransactionStatus.INERROR
    with pytest.raises(errors.InFailedSqlTransaction):
        conn.execute("SELECT 1")
    with pytest.raises(errors.InFailedSqlTransaction):
        conn.execute(f"SELECT pgml.embed('{MODEL}', 'x')")
    conn.execute("ROLLBACK")
    assert snapshot(direct, docs) == before
    assert_usable(conn)


def test_errors_through_psql_show_sqlstate_and_the_session_goes_on(
    pgml_proxy: ProxyProcess, docs: str
) -> None:
    result = psql(
        pgml_proxy.dsn(),
        f"SELECT pgml.embed('{UNKNOWN_MODEL}', 'x')",
        f"SELECT pgml.embed('{MODEL}', 'x', '{{bad')",
        f"DO $$ BEGIN PERFORM pgml.embed('{MODEL}', 'x'); END $$",
        "SELECT pgml.embed(1, 2)",
        f"SELECT count(pgml.embed('{MODEL}', body)) AS n FROM {docs}",
    )
    errors_seen = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert [line.split()[1] for line in errors_seen] == ["42704:", "22P02:", "0A000:", "42883:"]
    assert "HINT:" in result.stderr
    assert "Traceback" not in result.stderr
    count = sum(b is not None for _, b, _ in doc_rows())
    assert result.stdout.splitlines()[-3:] == ["n", str(count), "(1 row)"]


# --- cancel ---------------------------------------------------------------------------------


def test_cancel_a_long_statement(
    conn: psycopg.Connection[Any], scratch: Callable[[str], str], direct: psycopg.Connection[Any]
) -> None:
    big = scratch("big")
    direct.execute(
        f"CREATE TABLE {big} AS SELECT g AS id, 'sentence number ' || g || ' of many' AS body "
        "FROM generate_series(1, 2000) AS g"
    )
    outcome: dict[str, Any] = {}

    def work() -> None:
        started = time.monotonic()
        try:
            conn.execute(f"SELECT count(pgml.embed('{MODEL}', body)) FROM {big}").fetchall()
        except psycopg.Error as exc:
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    worker = threading.Thread(target=work)
    worker.start()
    time.sleep(1.0)
    cancelled_at = time.monotonic()
    conn.cancel_safe(timeout=5)
    worker.join(30)
    assert not worker.is_alive()
    assert "error" in outcome, f"not cancelled: finished after {outcome['seconds']:.1f} s"
    assert outcome["error"].sqlstate == "57014"
    assert time.monotonic() - cancelled_at < 5
    assert_usable(conn)
