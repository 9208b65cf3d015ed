"""The pgml catalog: created once under concurrent first calls, migrated in place."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import psycopg
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


# --- the owner rule, held by PostgreSQL for SQL written straight to the catalog -------------

CATALOG = ("projects", "snapshots", "models", "deployments", "files", "logs")
OWN = ("snapshots", "models", "deployments", "files", "logs")
"""The tables whose rows belong to a project, under the catalog's policies."""


@dataclass
class Teams:
    """Roles of a fresh database's catalog: project 1 is ``team``'s, project 2 ``tuner``'s,
    each with snapshot, model, deployment, file and log N.  ``tuner`` holds every privilege
    on the catalog's tables, ``alice`` only PUBLIC's."""

    database: str
    team: str
    tuner: str
    alice: str


@pytest.fixture
def teams(cluster: PostgresCluster, database: str) -> Iterator[Teams]:
    suffix = uuid.uuid4().hex[:6]
    found = Teams(database, f"team_{suffix}", f"tuner_{suffix}", f"alice_{suffix}")
    cluster.psql(
        f"CREATE ROLE {found.team} NOLOGIN; CREATE ROLE {found.tuner} LOGIN; "
        f"CREATE ROLE {found.alice} LOGIN"
    )

    async def create() -> None:
        connection = await connect(cluster, database)
        try:
            await catalog.ensure_catalog(connection)
        finally:
            await connection.close()

    run(create())
    rows = []
    for n, owner in ((1, found.team), (2, found.tuner)):
        rows.append(
            f"INSERT INTO pgml.projects (name, task, owner) "
            f"VALUES ('p{n}', 'text-classification', '{owner}'); "
            f"INSERT INTO pgml.snapshots (relation_name, project_id) VALUES ('r{n}', {n}); "
            f"INSERT INTO pgml.models (project_id, snapshot_id, algorithm, status) "
            f"VALUES ({n}, {n}, 'a{n}', 'successful'); "
            f"INSERT INTO pgml.deployments (project_id, model_id, strategy) "
            f"VALUES ({n}, {n}, 'most_recent'); "
            f"INSERT INTO pgml.files (model_id, path, part, data) VALUES ({n}, 'f', 0, 'x'); "
            f"INSERT INTO pgml.logs (model_id, project_id, logs) VALUES ({n}, {n}, '{{}}'); "
        )
    cluster.psql(
        "".join(rows) + f"GRANT ALL ON ALL TABLES IN SCHEMA pgml TO {found.tuner}; "
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA pgml TO {found.tuner}",
        database=database,
    )
    yield found
    for role in (found.team, found.tuner, found.alice):
        cluster.psql(f"DROP OWNED BY {role}", database=database)
        cluster.psql(f"DROP OWNED BY {role}; DROP ROLE {role}")


def contents(cluster: PostgresCluster, database: str) -> str:
    """Every row of the catalog's tables, as the superuser reads them."""
    return cluster.psql(
        "".join(f"SELECT * FROM pgml.{t} ORDER BY id; " for t in CATALOG), database=database
    )


def as_role(cluster: PostgresCluster, teams: Teams, role: str, sql: str) -> tuple[str, int]:
    """The command tag's row count, or PostgreSQL's error (``SQLSTATE: message``)."""
    with psycopg.connect(cluster.dsn(role, database=teams.database), autocommit=True) as conn:
        try:
            return "", conn.execute(sql).rowcount
        except psycopg.Error as error:
            return f"{error.sqlstate}: {error.diag.message_primary}", -1


def violates(table: str) -> str:
    return f'42501: new row violates row-level security policy for table "{table}"'


MEMBERS_ONLY = [
    # (statement of tuner's about the team's project 1, what PostgreSQL answers: the
    # policy's error, or "" for an UPDATE or DELETE that finds no row it may change)
    (
        "INSERT INTO pgml.deployments (id, project_id, model_id, strategy) "
        "VALUES (424242, 1, 1, 'x')",
        violates("deployments"),
    ),
    (
        "INSERT INTO pgml.models (id, project_id, snapshot_id, algorithm, status) "
        "VALUES (424242, 1, 1, 'x', 'successful')",
        violates("models"),
    ),
    (
        "INSERT INTO pgml.snapshots (relation_name, project_id) VALUES ('x', 1)",
        violates("snapshots"),
    ),
    (
        "INSERT INTO pgml.files (model_id, path, part, data) VALUES (1, 'g', 0, 'x')",
        violates("files"),
    ),
    ("INSERT INTO pgml.logs (model_id, project_id, logs) VALUES (1, 1, '{}')", violates("logs")),
    ("INSERT INTO pgml.logs (model_id, logs) VALUES (1, '{}')", violates("logs")),
    ("UPDATE pgml.models SET status = 'failed' WHERE id = 1", ""),
    ("UPDATE pgml.deployments SET model_id = 1 WHERE project_id = 1", ""),
    ("UPDATE pgml.snapshots SET relation_name = 'x' WHERE id = 1", ""),
    ("DELETE FROM pgml.deployments WHERE id = 1", ""),
    ("DELETE FROM pgml.models WHERE id = 1", ""),
    ("DELETE FROM pgml.files WHERE model_id = 1", ""),
    ("DELETE FROM pgml.logs WHERE project_id = 1", ""),
    # the team's project itself (tuner holds UPDATE and DELETE on pgml.projects)
    (
        "UPDATE pgml.projects SET task = 'translation' WHERE id = 1",
        '42501: must be a member of role {team} to update project "p1"',
    ),
    (
        "DELETE FROM pgml.projects WHERE id = 1",
        '42501: must be a member of role {team} to delete project "p1"',
    ),
    # tuner's own rows moved into the team's project
    (
        "UPDATE pgml.deployments SET project_id = 1, model_id = 1 WHERE id = 2",
        violates("deployments"),
    ),
    ("UPDATE pgml.logs SET project_id = 1, model_id = 1 WHERE id = 2", violates("logs")),
]


@pytest.mark.parametrize(("sql", "refusal"), MEMBERS_ONLY, ids=[s for s, _ in MEMBERS_ONLY])
def test_writes_need_membership_in_the_projects_owner(
    cluster: PostgresCluster, teams: Teams, sql: str, refusal: str
) -> None:
    """Whatever the grants, a write to rows of a project is PostgreSQL's to refuse unless
    the writer is a member of the project's owner; then the same statement goes through."""
    before = contents(cluster, teams.database)
    refusal = refusal.format(team=teams.team)
    assert as_role(cluster, teams, teams.tuner, sql) == (refusal, -1 if refusal else 0)
    assert contents(cluster, teams.database) == before
    cluster.psql(f"GRANT {teams.team} TO {teams.tuner}")
    assert as_role(cluster, teams, teams.tuner, sql) == ("", 1)


NEVER = [
    # whoever writes: a deployment, model or log ties together rows of two projects
    (
        "INSERT INTO pgml.deployments (project_id, model_id, strategy) VALUES (1, 2, 'x')",
        violates("deployments"),
    ),
    (
        "INSERT INTO pgml.models (project_id, snapshot_id, algorithm) VALUES (1, 2, 'x')",
        violates("models"),
    ),
    ("UPDATE pgml.models SET snapshot_id = 1 WHERE id = 2", violates("models")),
    ("INSERT INTO pgml.logs (model_id, project_id, logs) VALUES (2, 1, '{}')", violates("logs")),
    ("INSERT INTO pgml.logs (logs) VALUES ('{}')", violates("logs")),
]


@pytest.mark.parametrize(("sql", "refusal"), NEVER, ids=[s for s, _ in NEVER])
def test_rows_of_two_projects_are_never_tied_together(
    cluster: PostgresCluster, teams: Teams, sql: str, refusal: str
) -> None:
    cluster.psql(f"GRANT {teams.team} TO {teams.tuner}")
    before = contents(cluster, teams.database)
    assert as_role(cluster, teams, teams.tuner, sql) == (refusal, -1)
    assert contents(cluster, teams.database) == before


def visible(cluster: PostgresCluster, teams: Teams, role: str) -> dict[str, str]:
    """What ``role`` reads of each table (and view): the projects its rows belong to, or
    the error's SQLSTATE."""
    queries = {
        "snapshots": "SELECT project_id FROM pgml.snapshots",
        "models": "SELECT project_id FROM pgml.models",
        "deployments": "SELECT project_id FROM pgml.deployments",
        "files": "SELECT model_id FROM pgml.files",  # model N is project N's
        "logs": "SELECT project_id FROM pgml.logs",
        "deployed_models": "SELECT right(name, 1) FROM pgml.deployed_models",
        "overview": "SELECT right(name, 1) FROM pgml.overview",
    }
    seen = {}
    dsn = cluster.dsn(role, database=teams.database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, sql in queries.items():
            try:
                seen[name] = ",".join(sorted(str(r[0]) for r in conn.execute(sql)))
            except psycopg.Error as error:
                seen[name] = f"{error.sqlstate}"
    return seen


def test_reads_follow_the_projects_visibility(cluster: PostgresCluster, teams: Teams) -> None:
    """Under the README's recipe (pgml.projects shows a role its owners' projects only), the
    rows of the other tables follow their project: a reader that cannot see a project sees
    none of its rows, through the views too."""
    cluster.psql(
        "REVOKE SELECT ON pgml.projects, pgml.models FROM PUBLIC; "
        f"GRANT SELECT ON pgml.files TO {teams.alice}; "
        "ALTER TABLE pgml.projects ENABLE ROW LEVEL SECURITY; "
        "CREATE POLICY members_only ON pgml.projects USING (pg_has_role(owner, 'MEMBER'))",
        database=teams.database,
    )
    seen = visible(cluster, teams, teams.alice)
    for read_projects_or_models in ("models", "deployed_models", "overview"):
        assert seen.pop(read_projects_or_models) == "42501"  # PUBLIC's SELECT was taken away
    assert set(seen.values()) == {""}  # she may read them, but no row is hers to see
    mine = {t: "2" for t in ("snapshots", "models", "deployments", "files", "logs")}
    views = {"deployed_models": "2", "overview": "2"}
    assert visible(cluster, teams, teams.tuner) == mine | views
    cluster.psql(f"GRANT {teams.team} TO {teams.tuner}")
    both = {t: "1,2" for t in mine | views}
    assert visible(cluster, teams, teams.tuner) == both


def test_a_version_4_catalog_is_migrated_to_the_owner_rule(
    cluster: PostgresCluster, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshots get the project of the models made from them, the policies hold from then
    on, and the catalog's owner (a role that is not a superuser) still writes any row."""
    role = f"setup_{uuid.uuid4().hex[:8]}"
    other = f"other_{uuid.uuid4().hex[:8]}"
    cluster.psql(
        f"CREATE ROLE {role} LOGIN; CREATE ROLE {other} LOGIN; "
        f"GRANT CREATE ON DATABASE {database} TO {role}"
    )

    async def migrate(version: int, sql: str) -> list[tuple[object, ...]]:
        monkeypatch.setattr(catalog, "VERSION", version)
        connection = await asyncpg.connect(cluster.dsn(role, database=database))
        try:
            assert await catalog.ensure_catalog(connection) == version
            await connection.execute(sql)
            if version < len(catalog.MIGRATIONS):
                return []
            rows = await connection.fetch(
                "SELECT s.id, s.project_id, m.id FROM pgml.snapshots AS s "
                "LEFT JOIN pgml.models AS m ON m.snapshot_id = s.id ORDER BY s.id"
            )
            return [tuple(r) for r in rows]
        finally:
            await connection.close()

    try:
        run(
            migrate(
                4,
                "INSERT INTO pgml.projects (name, task) VALUES ('old', 'translation'); "
                "INSERT INTO pgml.snapshots (relation_name) VALUES ('r'), ('unused'); "
                "INSERT INTO pgml.models (project_id, snapshot_id, algorithm) VALUES (1, 1, 'a')",
            )
        )
        # the owner writes rows of a project that is another role's
        rows = run(
            migrate(
                len(catalog.MIGRATIONS),
                f"INSERT INTO pgml.projects (name, task, owner) VALUES ('new', 'translation', "
                f"'{other}'); INSERT INTO pgml.snapshots (relation_name, project_id) "
                "VALUES ('s', 2); INSERT INTO pgml.models (project_id, snapshot_id, algorithm) "
                "VALUES (2, 3, 'b'); INSERT INTO pgml.deployments (project_id, model_id, "
                "strategy) VALUES (2, 2, 'most_recent')",
            )
        )
        assert rows == [(1, 1, 1), (2, None, None), (3, 2, 2)]
        secured = cluster.psql(
            "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class "
            "WHERE relnamespace = 'pgml'::regnamespace AND relrowsecurity",
            database=database,
        )
        assert secured.strip() == "deployments,files,logs,models,snapshots"
        grant = f"GRANT INSERT ON pgml.deployments TO {other}"
        cluster.psql(f"SET ROLE {role}; {grant}", database=database)
        refused = "INSERT INTO pgml.deployments (id, project_id, model_id, strategy) VALUES "
        with psycopg.connect(cluster.dsn(other, database=database), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(refused + "(424242, 1, 1, 'x')")  # the old project is role's
            conn.execute(refused + "(424242, 2, 2, 'x')")  # its own
    finally:
        cluster.psql(f"DROP DATABASE {database} WITH (FORCE)")
        cluster.psql(f"CREATE DATABASE {database}")  # the fixture drops it again
        cluster.psql(f"DROP ROLE {role}; DROP ROLE {other}")
