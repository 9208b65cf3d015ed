"""CREATE / DROP EXTENSION pgml and DROP SCHEMA pgml through the proxy, with psql and
psycopg (its extended protocol): answered as PostgreSQL answers them for an installed
extension, the catalog made again by the next pgml call, and a catalog that is not the
proxy's left untouched. Each test has a database of its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors

from handlers import catalog
from tests.integration._pgml import psql
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess


@pytest.fixture
def database(cluster: PostgresCluster) -> Iterator[str]:
    name = f"ext_{uuid.uuid4().hex[:10]}"
    cluster.psql(f"CREATE DATABASE {name}")
    yield name
    cluster.psql(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def dsn(proxy: ProxyProcess, database: str) -> str:
    return proxy.dsn(database=database)


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def version(cluster: PostgresCluster, database: str) -> str:
    return cluster.psql(
        "SELECT coalesce(max(version), 0) FROM pgml.catalog_version", database=database
    ).strip()


def test_create_extension_sets_up_the_catalog(
    dsn: str, cluster: PostgresCluster, database: str
) -> None:
    with connect(dsn) as conn:
        cursor = conn.execute("CREATE EXTENSION pgml")
        assert cursor.statusmessage == "CREATE EXTENSION"
        assert version(cluster, database) == str(catalog.VERSION)
        with pytest.raises(errors.DuplicateObject, match='extension "pgml" already exists'):
            conn.execute("CREATE EXTENSION pgml")
        notices: list[tuple[str | None, str | None]] = []
        conn.add_notice_handler(lambda n: notices.append((n.sqlstate, n.message_primary)))
        cursor = conn.execute("CREATE EXTENSION IF NOT EXISTS pgml")
        assert cursor.statusmessage == "CREATE EXTENSION"
        assert notices == [("42710", 'extension "pgml" already exists, skipping')]
        assert conn.execute("ALTER EXTENSION pgml UPDATE").statusmessage == "ALTER EXTENSION"
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on


def test_psql_runs_postgresml_reset_lines(dsn: str, cluster: PostgresCluster) -> None:
    """The first lines of PostgresML's test script, twice (the second run finds the
    catalog the first made, with a project deployed)."""
    script = [
        "DROP EXTENSION IF EXISTS pgml CASCADE",
        "DROP SCHEMA IF EXISTS pgml CASCADE",
        "CREATE EXTENSION pgml",
        "SELECT pgml.load_dataset('iris')",
        "SELECT * FROM pgml.train('ext iris', 'classification', 'pgml.iris', 'target', 'linear')",
        "SELECT pgml.predict('ext iris', ARRAY[5.1, 3.5, 1.4, 0.2])",
        "SELECT * FROM pgml.deploy('ext iris', 'most_recent')",
    ]
    for _ in range(2):
        out = psql(dsn, *script)
        assert out.returncode == 0, out.stderr
        assert "ERROR" not in out.stderr, out.stderr
        assert out.stdout.count("CREATE EXTENSION") == 1
        assert "DROP EXTENSION" in out.stdout
    assert 'extension "pgml" does not exist, skipping' not in out.stderr


def test_drop_extension_without_catalog(dsn: str) -> None:
    out = psql(dsn, "DROP EXTENSION IF EXISTS pgml")
    assert out.returncode == 0
    assert 'NOTICE:  00000: extension "pgml" does not exist, skipping' in out.stderr
    assert "DROP EXTENSION" in out.stdout
    with connect(dsn) as conn, pytest.raises(errors.UndefinedObject):
        conn.execute("DROP EXTENSION pgml")


@pytest.mark.parametrize("drop", ["DROP SCHEMA pgml CASCADE", "DROP EXTENSION pgml"])
def test_a_pgml_call_after_a_drop_recreates_the_catalog(
    dsn: str, cluster: PostgresCluster, database: str, drop: str
) -> None:
    with connect(dsn) as conn:
        conn.execute("SELECT pgml.load_dataset('iris')")
        conn.execute("SELECT * FROM pgml.train('p', 'classification', 'pgml.iris', 'target')")
        assert conn.execute(drop).statusmessage == drop.split(" pgml")[0]
        assert (
            cluster.psql(
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgml'", database=database
            ).strip()
            == "0"
        )
        with pytest.raises(errors.UndefinedObject, match='project "p" does not exist'):
            conn.execute("SELECT * FROM pgml.deploy('p', 'most_recent')")
        assert version(cluster, database) == str(catalog.VERSION)
        conn.execute("SELECT pgml.load_dataset('iris')")
        project = conn.execute(
            "SELECT * FROM pgml.train('p', 'classification', 'pgml.iris', 'target')"
        ).fetchone()
        assert project == ("p", "classification", "linear", True)
        (label,) = conn.execute("SELECT pgml.predict('p', ARRAY[5.1, 3.5, 1.4, 0.2])").fetchone()
        assert label == 0


def test_a_vector_function_on_a_fresh_database_creates_the_catalog(dsn: str) -> None:
    with connect(dsn) as conn:
        assert conn.execute("SELECT pgml.norm_l1(ARRAY[1, -2]::real[])").fetchone() == (3.0,)
        conn.execute("DROP SCHEMA pgml CASCADE")
        assert conn.execute("SELECT pgml.norm_l1(ARRAY[1, -2]::real[])").fetchone() == (3.0,)


def test_drop_extension_refuses_dependents_without_cascade(
    dsn: str, cluster: PostgresCluster, database: str
) -> None:
    with connect(dsn) as conn:
        conn.execute("CREATE EXTENSION pgml")
        conn.execute("CREATE VIEW lengths AS SELECT pgml.norm_l2(ARRAY[3, 4]::real[]) AS n")
        with pytest.raises(errors.DependentObjectsStillExist) as raised:
            conn.execute("DROP EXTENSION pgml")
        assert "view lengths depends on extension pgml" in (raised.value.diag.message_detail or "")
        assert version(cluster, database) == str(catalog.VERSION)
        assert conn.execute("SELECT n FROM lengths").fetchone() == (5.0,)
        conn.execute("DROP EXTENSION pgml CASCADE")
        assert (
            cluster.psql(
                "SELECT count(*) FROM pg_class WHERE relname = 'lengths'", database=database
            ).strip()
            == "0"
        )


def test_drop_extension_in_a_rolled_back_transaction_keeps_the_catalog(
    dsn: str, cluster: PostgresCluster, database: str
) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE EXTENSION pgml")
        conn.commit()
        conn.execute("DROP EXTENSION pgml")
        conn.rollback()
        assert conn.execute("SELECT pgml.add(ARRAY[1]::real[], 1::real)").fetchone() == ([2.0],)
    assert version(cluster, database) == str(catalog.VERSION)


def test_a_postgresml_catalog_is_not_clobbered(
    dsn: str, cluster: PostgresCluster, database: str
) -> None:
    cluster.psql(
        "CREATE SCHEMA pgml; CREATE TABLE pgml.projects (id bigserial, name text, task text);"
        "INSERT INTO pgml.projects (name, task) VALUES ('theirs', 'regression')",
        database=database,
    )
    with connect(dsn) as conn:
        for statement in ("CREATE EXTENSION pgml", "SELECT pgml.load_dataset('iris')"):
            with pytest.raises(errors.ObjectNotInPrerequisiteState) as raised:
                conn.execute(statement)
            assert "did not create" in raised.value.diag.message_primary
            assert "ALTER SCHEMA pgml RENAME" in (raised.value.diag.message_hint or "")
    assert cluster.psql("SELECT name FROM pgml.projects", database=database).strip() == "theirs"
    assert (
        cluster.psql(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'pgml'", database=database
        ).strip()
        == "1"
    )
