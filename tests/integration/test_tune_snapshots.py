"""The snapshot pgml.tune trains on: read with COPY in the caller's session into a columnar
file, recorded with its row count and a checksum of its rows, and with
``materialize_snapshot => true`` kept as the table ``pgml.snapshot_<id>``, written in the
caller's own session and transaction (their privileges apply; a failed tune keeps none).
An error in the middle of the copy reaches the client as PostgreSQL's own."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.conftest import PASSWORDS
from tests.integration._pgml import psql
from tests.integration.conftest import dropped_afterwards
from tests.integration.test_tune_errors import TWO_CLASSES, create_table, lit, models_of, tune_sql
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

AWKWARD = [
    "plain words",
    "with, a comma",
    'with "quotes" inside',
    "two\nlines",
    "a\ttab and a \\ backslash",
    "",
    "NULL",
    "\\.",
    "café ☕ ünïcödé",
    "  leading and trailing spaces  ",
]


@pytest.fixture(scope="module")
def direct(cluster: PostgresCluster) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def tables(cluster: PostgresCluster) -> Iterator[Callable[[str], str]]:
    yield from dropped_afterwards(cluster)


def copy_checksum(direct: psycopg.Connection[Any], sql: str) -> tuple[int, str]:
    """Rows and sha256 of ``COPY (sql) TO STDOUT (FORMAT csv)``, read straight from
    PostgreSQL: what the snapshot's checksum must be."""
    digest = hashlib.sha256()
    with (
        direct.cursor() as cur,
        cur.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, ENCODING 'UTF8')") as copy,
    ):
        for chunk in copy:
            digest.update(chunk)
    (rows,) = direct.execute(f"SELECT count(*) FROM ({sql}) AS s").fetchone() or (0,)
    return int(rows), "sha256:" + digest.hexdigest()


def snapshot_of(direct: psycopg.Connection[Any], project: str) -> dict[str, Any]:
    row = direct.execute(
        "SELECT s.id, s.rows, s.checksum, s.materialized, s.analysis FROM pgml.snapshots s "
        "JOIN pgml.models m ON m.snapshot_id = s.id JOIN pgml.projects p ON p.id = m.project_id "
        "WHERE p.name = %s ORDER BY m.id DESC LIMIT 1",
        [project],
    ).fetchone()
    assert row is not None
    return dict(zip(("id", "rows", "checksum", "materialized", "analysis"), row, strict=True))


def snapshot_tables(direct: psycopg.Connection[Any]) -> set[str]:
    return {
        r[0]
        for r in direct.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'pgml' "
            "AND tablename LIKE 'snapshot%'"
        ).fetchall()
    }


def test_the_snapshot_records_its_rows_and_checksum(
    tuner: ProxyProcess,
    direct: psycopg.Connection[Any],
    tables: Callable[[str], str],
) -> None:
    table = tables("awkward")
    direct.execute(f'CREATE TABLE {table} ("Text" text, label int)')
    rows = [(f"{AWKWARD[i % len(AWKWARD)]} {i}", i % 2) for i in range(60)]
    rows += [(text, 1) for text in AWKWARD]  # each exactly, the empty string too
    with direct.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} VALUES (%s, %s)", rows)
    project = f"{table}_p"
    sql = tune_sql(project, table, test_size="10")
    with psycopg.connect(tuner.dsn(), autocommit=True) as conn:
        assert conn.execute(sql).fetchone() == (
            project,
            "text-classification",
            "distilbert-base-uncased",
            True,
        )
    found = snapshot_of(direct, project)
    expected = copy_checksum(direct, f'SELECT "Text"::text, label::text FROM {table}')
    assert (found["rows"], found["checksum"]) == expected
    assert found["rows"] == len(rows)
    assert found["materialized"] is False
    assert found["analysis"] == {
        "rows": len(rows),
        "train_rows": len(rows) - 10,
        "test_rows": 10,
        "labels": ["0", "1"],
        "label_type": "real",
    }
    assert f"snapshot_{found['id']}" not in snapshot_tables(direct)


def test_a_snapshot_of_many_batches(
    tuner: ProxyProcess,
    direct: psycopg.Connection[Any],
    tables: Callable[[str], str],
) -> None:
    """50,000 rows (about 5 MB of COPY data, several batches of the proxy's writer)."""
    table = tables("many")
    direct.execute(
        f"CREATE TABLE {table} AS SELECT 'review number ' || g || ' ' || repeat('words ', 12) "
        "|| CASE WHEN g % 2 = 0 THEN 'great fun' ELSE 'dull mess' END AS text, g % 2 AS label "
        "FROM generate_series(1, 50000) AS g"
    )
    project = f"{table}_p"
    sql = tune_sql(project, table, hyperparams=lit('{"max_steps": 2}'), test_size="20")
    with psycopg.connect(tuner.dsn(), autocommit=True) as conn:
        conn.execute(sql).fetchone()
    found = snapshot_of(direct, project)
    assert (found["rows"], found["checksum"]) == copy_checksum(
        direct, f"SELECT text::text, label::text FROM {table}"
    )
    assert found["analysis"]["train_rows"] == 49_980
    assert [m[1] for m in models_of(direct, project)] == ["successful"]


def test_materialize_snapshot_keeps_a_copy(
    tuner: ProxyProcess,
    cluster: PostgresCluster,
    direct: psycopg.Connection[Any],
    tables: Callable[[str], str],
) -> None:
    table = tables("kept")
    create_table(cluster, table, "(text text, label int, note text)", TWO_CLASSES + ", 'n' || g")
    direct.execute(f"CREATE VIEW {table}_in AS SELECT text, label FROM {table}")
    project = f"{table}_p"
    out = psql(tuner.dsn(), tune_sql(project, f"{table}_in", materialize_snapshot="true"))
    assert out.returncode == 0 and "ERROR" not in out.stderr, out.stderr
    found = snapshot_of(direct, project)
    name = f"pgml.snapshot_{found['id']}"
    assert found["materialized"] is True
    kept = direct.execute(f"SELECT * FROM {name}").fetchall()
    source = direct.execute(f"SELECT * FROM {table}_in").fetchall()
    assert kept == source
    assert (found["rows"], found["checksum"]) == copy_checksum(
        direct, f"SELECT text::text, label::text FROM {name}"
    )
    owner = direct.execute(
        "SELECT tableowner FROM pg_tables WHERE schemaname = 'pgml' AND tablename = %s",
        [f"snapshot_{found['id']}"],
    ).fetchone()
    assert owner == ("postgres",)
    direct.execute(f"UPDATE {table} SET label = 1 - label")  # the source changes; the copy not
    assert direct.execute(f"SELECT * FROM {name}").fetchall() == source
    assert not any(t.startswith("snapshot_pending") for t in snapshot_tables(direct))
    direct.execute(f"DROP TABLE {name}")


def test_materialize_snapshot_needs_create_on_pgml(
    tuner: ProxyProcess,
    cluster: PostgresCluster,
    direct: psycopg.Connection[Any],
    tables: Callable[[str], str],
) -> None:
    table = tables("kept_priv")
    create_table(cluster, table, "(text text, label int)", TWO_CLASSES)
    cluster.psql(f"GRANT SELECT ON {table} TO plain_user")
    project = f"{table}_p"
    dsn = tuner.dsn("plain_user")
    catalog = "pgml.projects, pgml.models, pgml.deployments"
    with psycopg.connect(dsn, password=PASSWORDS["plain_user"], autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as raised:
            conn.execute(tune_sql(project, table, materialize_snapshot="true"))
        assert f"permission denied for tables {catalog}" in str(raised.value)  # see test_access
        before = snapshot_tables(direct)
        cluster.psql(f"GRANT INSERT ON {catalog} TO plain_user")
        with revoked_after(cluster, f"INSERT ON {catalog}"):
            with pytest.raises(errors.InsufficientPrivilege) as raised:
                conn.execute(tune_sql(project, table, materialize_snapshot="true"))
            assert "permission denied for schema pgml" in str(raised.value)
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert models_of(direct, project) == []
            cluster.psql("GRANT CREATE ON SCHEMA pgml TO plain_user")
            with revoked_after(cluster, "CREATE ON SCHEMA pgml"):
                row = conn.execute(tune_sql(project, table, materialize_snapshot="true"))
                found_row = row.fetchone()
                assert found_row is not None and found_row[0] == project
    found = snapshot_of(direct, project)
    owner = direct.execute(
        "SELECT tableowner FROM pg_tables WHERE schemaname = 'pgml' AND tablename = %s",
        [f"snapshot_{found['id']}"],
    ).fetchone()
    assert owner == ("plain_user",)
    assert snapshot_tables(direct) == before | {f"snapshot_{found['id']}"}
    direct.execute(f"DROP TABLE pgml.snapshot_{found['id']}")


@contextmanager
def revoked_after(cluster: PostgresCluster, privilege: str) -> Iterator[None]:
    try:
        yield
    finally:
        cluster.psql(f"REVOKE {privilege} FROM plain_user")


@pytest.mark.parametrize("in_transaction", [False, True])
def test_a_refused_tune_keeps_no_materialized_snapshot(
    in_transaction: bool,
    tuner: ProxyProcess,
    cluster: PostgresCluster,
    direct: psycopg.Connection[Any],
    tables: Callable[[str], str],
) -> None:
    table = tables("one_class")
    create_table(cluster, table, "(text text, label int)", "'text ' || g, 1")
    project = f"{table}_p"
    before = snapshot_tables(direct)
    with psycopg.connect(tuner.dsn(), autocommit=not in_transaction) as conn:
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(tune_sql(project, table, materialize_snapshot="true"))
        assert raised.value.sqlstate == "22023"
        assert "single class" in str(raised.value)
        if in_transaction:
            conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert snapshot_tables(direct) == before
    assert models_of(direct, project) == []


def test_an_error_in_the_middle_of_the_copy(
    tuner: ProxyProcess,
    cluster: PostgresCluster,
    direct: psycopg.Connection[Any],
    tables: Callable[[str], str],
) -> None:
    """The relation fails on its 300th row, after many rows were copied: PostgreSQL's error,
    the session in step and usable, nothing recorded."""
    numbers = tables("breaks")
    direct.execute(f"CREATE TABLE {numbers} AS SELECT g FROM generate_series(1, 400) AS g")
    table = f"{numbers}_v"  # dropped with the table
    direct.execute(
        f"CREATE VIEW {table} AS SELECT 'review ' || g AS text, "
        f"CASE WHEN g = 300 THEN 1 / (g - 300) ELSE g % 2 END AS label FROM {numbers}"
    )
    project = f"{table}_p"
    out = psql(tuner.dsn(), tune_sql(project, table), "SELECT 1 AS still_usable")
    assert "ERROR:  22012: division by zero" in out.stderr, out.stderr
    assert out.stdout.splitlines()[-3:] == ["still_usable", "1", "(1 row)"]
    with psycopg.connect(tuner.dsn()) as conn:  # in a transaction: it is aborted
        with pytest.raises(errors.DivisionByZero):
            conn.execute(tune_sql(project, table))
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert models_of(direct, project) == []
