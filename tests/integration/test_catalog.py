"""The pgml catalog: created once under concurrent first calls, migrated in place."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from handlers import catalog
from tests.support.pgserver import PostgresCluster

TABLES = {"projects", "snapshots", "models", "deployments", "files", "logs", "catalog_version"}
VIEWS = {"deployed_models", "trained_models", "overview"}


@pytest.fixture
def database(cluster: PostgresCluster) -> Iterator[str]:
    name = f"catalog_{uuid.uuid4().hex[:10]}"
    cluster.psql(f"CREATE DATABASE {name}")
    yield name
    cluster.psql(f"DROP DATABASE {name} WITH (FORCE)")


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


async def connect(cluster: PostgresCluster, database: str) -> asyncpg.Connection:
    return await asyncpg.connect(cluster.dsn(database=database))


def test_twenty_concurrent_first_calls_create_it_once(
    cluster: PostgresCluster, database: str
) -> None:
    async def main() -> tuple[list[int], list[int], set[str], set[str]]:
        connections = [await connect(cluster, database) for _ in range(20)]
        try:
            versions = await asyncio.gather(*(catalog.ensure_catalog(c) for c in connections))
            check = connections[0]
            recorded = [
                r["version"]
                for r in await check.fetch(
                    "SELECT version FROM pgml.catalog_version ORDER BY version"
                )
            ]
            tables = {
                r["tablename"]
                for r in await check.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'pgml'"
                )
            }
            views = {
                r["viewname"]
                for r in await check.fetch(
                    "SELECT viewname FROM pg_views WHERE schemaname = 'pgml'"
                )
            }
            return list(versions), recorded, tables, views
        finally:
            for connection in connections:
                await connection.close()

    versions, recorded, tables, views = run(main())  # type: ignore[misc]
    assert versions == [catalog.VERSION] * 20
    assert recorded == list(range(1, catalog.VERSION + 1))
    assert tables == TABLES
    assert views == VIEWS


def test_a_later_version_migrates_without_losing_rows(
    cluster: PostgresCluster, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def first() -> None:
        connection = await connect(cluster, database)
        try:
            await catalog.ensure_catalog(connection)
            await connection.execute(
                "INSERT INTO pgml.projects (name, task) VALUES ('kept', 'text-classification')"
            )
        finally:
            await connection.close()

    run(first())
    later = [*catalog.MIGRATIONS, "ALTER TABLE pgml.projects ADD COLUMN note text DEFAULT 'n'"]
    monkeypatch.setattr(catalog, "MIGRATIONS", later)
    monkeypatch.setattr(catalog, "VERSION", len(later))

    async def second() -> tuple[int, list[tuple[str, str, str]]]:
        connection = await connect(cluster, database)
        try:
            version = await catalog.ensure_catalog(connection)
            rows = await connection.fetch("SELECT name, task, note FROM pgml.projects")
            return version, [tuple(r) for r in rows]
        finally:
            await connection.close()

    version, rows = run(second())  # type: ignore[misc]
    assert version == len(later)
    assert rows == [("kept", "text-classification", "n")]


def test_views_answer_for_a_deployed_model(cluster: PostgresCluster, database: str) -> None:
    async def main() -> list[tuple[object, ...]]:
        connection = await connect(cluster, database)
        try:
            await catalog.ensure_catalog(connection)
            await connection.execute(
                """
                WITH p AS (INSERT INTO pgml.projects (name, task)
                           VALUES ('p', 'translation') RETURNING id),
                     m AS (INSERT INTO pgml.models (project_id, algorithm, status)
                           SELECT id, 'Helsinki-NLP/opus-mt-en-es', 'successful' FROM p
                           RETURNING id, project_id)
                INSERT INTO pgml.deployments (project_id, model_id, strategy)
                SELECT project_id, id, 'most_recent' FROM m
                """
            )
            rows = await connection.fetch(
                "SELECT name, task, algorithm, strategy FROM pgml.deployed_models"
            )
            return [tuple(r) for r in rows]
        finally:
            await connection.close()

    assert run(main()) == [("p", "translation", "Helsinki-NLP/opus-mt-en-es", "most_recent")]


def test_projects_made_before_owners_belong_to_the_catalogs_owner(
    cluster: PostgresCluster, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 3 gives projects owners: the ones already there go to whoever owns the
    catalog (the role that set the proxy up), so the guide keeps working for it."""
    role = f"setup_{uuid.uuid4().hex[:8]}"
    cluster.psql(f"CREATE ROLE {role} LOGIN; GRANT CREATE ON DATABASE {database} TO {role}")
    owners = catalog.MIGRATIONS.index(next(m for m in catalog.MIGRATIONS if "owner" in m))

    async def migrate(version: int) -> list[tuple[str, str]]:
        monkeypatch.setattr(catalog, "VERSION", version)
        connection = await asyncpg.connect(cluster.dsn(role, database=database))
        try:
            await catalog.ensure_catalog(connection)
            if version == owners:
                await connection.execute(
                    "INSERT INTO pgml.projects (name, task) VALUES ('old', 'translation')"
                )
                return []
            await connection.execute(
                "INSERT INTO pgml.projects (name, task) VALUES ('new', 'translation')"
            )
            rows = await connection.fetch("SELECT name, owner::text FROM pgml.projects ORDER BY id")
            return [tuple(r) for r in rows]
        finally:
            await connection.close()

    try:
        run(migrate(owners))
        assert run(migrate(len(catalog.MIGRATIONS))) == [("old", role), ("new", role)]
    finally:
        cluster.psql(f"DROP DATABASE {database} WITH (FORCE)")
        cluster.psql(f"CREATE DATABASE {database}")  # the fixture drops it again
        cluster.psql(f"DROP ROLE {role}")
