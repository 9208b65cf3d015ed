"""The ``pgml`` schema: projects, snapshots, models, deployments, files and logs.

Created on the first pgml call that needs it in each database and migrated in place by
later versions: each migration runs once, in order, inside one transaction that holds an
advisory lock, so many sessions making their first call at once create it exactly once.
Column names follow PostgresML so that existing queries keep working.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from handlers import vectors
from handlers.errors import PgmlError

log = logging.getLogger("pgml_proxy.catalog")

LOCK_KEY = 0x70676D6C  # "pgml"
CHANGES_CHANNEL = "pgml_catalog"
"""Notified whenever projects, models or deployments change."""
"""Advisory lock serialising catalog migrations in a database."""

MIGRATIONS: list[str] = [
    # 1: the tables and views of the SQL surface.
    """
    CREATE SCHEMA IF NOT EXISTS pgml;
    CREATE TABLE pgml.projects (
        id bigserial PRIMARY KEY,
        name text NOT NULL UNIQUE,
        task text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    CREATE TABLE pgml.snapshots (
        id bigserial PRIMARY KEY,
        relation_name text NOT NULL,
        y_column_name text[],
        test_size real,
        test_sampling text,
        status text NOT NULL DEFAULT 'in_progress',
        columns jsonb,
        analysis jsonb,
        created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    CREATE TABLE pgml.models (
        id bigserial PRIMARY KEY,
        project_id bigint NOT NULL REFERENCES pgml.projects (id) ON DELETE CASCADE,
        snapshot_id bigint REFERENCES pgml.snapshots (id) ON DELETE SET NULL,
        algorithm text NOT NULL,
        hyperparams jsonb NOT NULL DEFAULT '{}',
        status text NOT NULL DEFAULT 'in_progress'
            CHECK (status IN ('in_progress', 'successful', 'failed', 'cancelled')),
        metrics jsonb,
        error text,
        created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    CREATE INDEX ON pgml.models (project_id);
    CREATE TABLE pgml.deployments (
        id bigserial PRIMARY KEY,
        project_id bigint NOT NULL REFERENCES pgml.projects (id) ON DELETE CASCADE,
        model_id bigint NOT NULL REFERENCES pgml.models (id) ON DELETE CASCADE,
        strategy text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    CREATE INDEX ON pgml.deployments (project_id, created_at);
    CREATE TABLE pgml.files (
        id bigserial PRIMARY KEY,
        model_id bigint NOT NULL REFERENCES pgml.models (id) ON DELETE CASCADE,
        path text NOT NULL,
        part integer NOT NULL,
        data bytea NOT NULL,
        UNIQUE (model_id, path, part)
    );
    CREATE TABLE pgml.logs (
        id bigserial PRIMARY KEY,
        model_id bigint REFERENCES pgml.models (id) ON DELETE CASCADE,
        project_id bigint REFERENCES pgml.projects (id) ON DELETE CASCADE,
        created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        logs jsonb NOT NULL
    );
    CREATE INDEX ON pgml.logs (model_id, id);
    CREATE VIEW pgml.deployed_models AS
        SELECT DISTINCT ON (d.project_id)
            m.id, p.name, p.task, m.algorithm, d.strategy, d.created_at AS deployed_at
        FROM pgml.deployments AS d
        JOIN pgml.projects AS p ON p.id = d.project_id
        JOIN pgml.models AS m ON m.id = d.model_id
        ORDER BY d.project_id, d.created_at DESC, d.id DESC;
    CREATE VIEW pgml.trained_models AS
        SELECT m.id, p.name, p.task, m.algorithm, m.status, m.metrics, m.created_at
        FROM pgml.models AS m JOIN pgml.projects AS p ON p.id = m.project_id;
    CREATE VIEW pgml.overview AS
        SELECT p.name, d.created_at AS deployed_at, p.task, m.algorithm,
               s.relation_name, s.y_column_name, s.test_sampling, s.test_size
        FROM pgml.projects AS p
        JOIN LATERAL (
            SELECT * FROM pgml.deployments WHERE project_id = p.id
            ORDER BY created_at DESC, id DESC LIMIT 1
        ) AS d ON true
        JOIN pgml.models AS m ON m.id = d.model_id
        LEFT JOIN pgml.snapshots AS s ON s.id = m.snapshot_id;
    GRANT USAGE ON SCHEMA pgml TO PUBLIC;
    GRANT SELECT ON pgml.projects, pgml.snapshots, pgml.models, pgml.deployments, pgml.logs,
        pgml.deployed_models, pgml.trained_models, pgml.overview TO PUBLIC;
    """,
    # 2: a notification on every change of projects, models and deployments, so that
    # proxies that cache what is deployed (see handlers/deployments.py) hear of it.
    f"""
    CREATE FUNCTION pgml.notify_catalog_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{CHANGES_CHANNEL}', TG_TABLE_NAME);
        RETURN NULL;
    END $$;
    CREATE TRIGGER notify_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
        ON pgml.projects FOR EACH STATEMENT EXECUTE FUNCTION pgml.notify_catalog_change();
    CREATE TRIGGER notify_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
        ON pgml.models FOR EACH STATEMENT EXECUTE FUNCTION pgml.notify_catalog_change();
    CREATE TRIGGER notify_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
        ON pgml.deployments FOR EACH STATEMENT EXECUTE FUNCTION pgml.notify_catalog_change();
    """,
    # 3: what a snapshot holds: its row count, a checksum of its rows (sha256 of the
    # rows as COPY ... (FORMAT csv) writes them), and whether it is kept as a table
    # pgml.snapshot_<id> (materialize_snapshot, PostgresML's column name).
    """
    ALTER TABLE pgml.snapshots
        ADD COLUMN rows bigint,
        ADD COLUMN checksum text,
        ADD COLUMN materialized boolean NOT NULL DEFAULT false;
    """,
    # 4: access. Projects have owners (existing ones go to the catalog's owner); setting
    # or changing an owner follows ALTER ... OWNER TO's rule; the views read the tables
    # with the reader's rights (so row-level security applies through them); and
    # pgml.authorize_serving asks whether the current role may be served a project.
    """
    ALTER TABLE pgml.projects ADD COLUMN owner regrole;
    UPDATE pgml.projects SET owner = (
        SELECT relowner FROM pg_catalog.pg_class WHERE oid = 'pgml.projects'::regclass
    )::regrole;
    ALTER TABLE pgml.projects
        ALTER COLUMN owner SET NOT NULL,
        ALTER COLUMN owner SET DEFAULT to_regrole(quote_ident(current_user));
    CREATE FUNCTION pgml.check_project_owner() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND NEW.owner = OLD.owner THEN
            RETURN NEW;
        END IF;
        IF pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class
                                   WHERE oid = TG_RELID), 'MEMBER') THEN
            RETURN NEW;  -- the catalog's owner (the proxy) records any role
        END IF;
        IF TG_OP = 'UPDATE' AND NOT pg_catalog.pg_has_role(OLD.owner, 'MEMBER') THEN
            RAISE EXCEPTION 'must be a member of role % to hand over project "%"',
                OLD.owner, OLD.name USING ERRCODE = '42501';
        END IF;
        IF NOT pg_catalog.pg_has_role(NEW.owner, 'MEMBER') THEN
            RAISE EXCEPTION 'must be able to SET ROLE % to make it the owner of project "%"',
                NEW.owner, NEW.name USING ERRCODE = '42501';
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER check_owner BEFORE INSERT OR UPDATE OF owner ON pgml.projects
        FOR EACH ROW EXECUTE FUNCTION pgml.check_project_owner();
    DO $$
    BEGIN
        IF current_setting('server_version_num')::int >= 150000 THEN
            ALTER VIEW pgml.deployed_models SET (security_invoker = true);
            ALTER VIEW pgml.trained_models SET (security_invoker = true);
            ALTER VIEW pgml.overview SET (security_invoker = true);
        END IF;
    END $$;
    CREATE FUNCTION pgml.serving_target(project_name text, OUT project_id bigint,
                                        OUT model_id bigint)
    LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        SELECT p.id, (SELECT d.model_id FROM pgml.deployments AS d WHERE d.project_id = p.id
                      ORDER BY d.created_at DESC, d.id DESC LIMIT 1)
        FROM pgml.projects AS p WHERE p.name = project_name
    $$;
    COMMENT ON FUNCTION pgml.serving_target(text) IS
        'The project and its deployed model, whoever may read them (used by authorize_serving).';
    CREATE FUNCTION pgml.authorize_serving(project_name text, model_id bigint DEFAULT NULL)
    RETURNS void LANGUAGE plpgsql STABLE SECURITY INVOKER AS $$
    -- model_id: the deployed model the caller is to be served (looked up when not given).
    -- No SET search_path: it would cost a third of the call, and as SECURITY INVOKER it
    -- runs with no more rights than its caller; every name in it is qualified.
    BEGIN
        IF project_name IS NULL THEN
            RETURN;
        END IF;
        PERFORM FROM pgml.projects AS p WHERE p.name = project_name;
        IF NOT FOUND THEN
            IF (SELECT t.project_id FROM pgml.serving_target(project_name) AS t) IS NULL THEN
                RETURN;  -- no such project: serving says so
            END IF;
            RAISE EXCEPTION 'permission denied for project "%"', project_name
                USING ERRCODE = '42501',
                DETAIL = 'The current role cannot read the project''s row in pgml.projects.',
                HINT = 'Serving a project needs SELECT on pgml.projects and pgml.models, and '
                       'its rows in both visible under their row-level security policies.';
        END IF;
        IF model_id IS NULL THEN
            model_id := (SELECT t.model_id FROM pgml.serving_target(project_name) AS t);
            IF model_id IS NULL THEN
                RETURN;  -- nothing deployed: serving says so
            END IF;
        END IF;
        PERFORM FROM pgml.models AS m WHERE m.id = model_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'permission denied for the deployed model of project "%"',
                project_name
                USING ERRCODE = '42501',
                DETAIL = format('The current role cannot read model %s in pgml.models.',
                                model_id),
                HINT = 'Serving a project needs SELECT on pgml.projects and pgml.models, and '
                       'its rows in both visible under their row-level security policies.';
        END IF;
    END $$;
    COMMENT ON FUNCTION pgml.authorize_serving(text, bigint) IS
        'Returns when the current role may be served the project (and its deployed model '
        'model_id); raises 42501 otherwise.';
    """,
    # 5: the catalog enforces its owner rule itself. Snapshots belong to a project; rows of
    # snapshots, models, deployments, files and logs are visible to a role that can see
    # their project in pgml.projects, and written only by a member of the project's owner
    # (policies of row-level security; the catalog's owner, the proxy, bypasses them); a
    # project itself is changed or deleted only by a member of its owner. A project the
    # caller cannot see is answered as one that does not exist.
    """
    ALTER TABLE pgml.snapshots
        ADD COLUMN project_id bigint REFERENCES pgml.projects (id) ON DELETE SET NULL;
    UPDATE pgml.snapshots AS s SET project_id = (
        SELECT min(m.project_id) FROM pgml.models AS m WHERE m.snapshot_id = s.id
    );
    CREATE FUNCTION pgml.visible_projects(members_only boolean) RETURNS SETOF bigint
    LANGUAGE plpgsql STABLE SECURITY INVOKER AS $$
    -- The projects the current role can see in pgml.projects (with members_only, those whose
    -- owner it is a member of): none without SELECT on the table, rather than an error.
    BEGIN
        IF pg_catalog.has_table_privilege('pgml.projects', 'SELECT') THEN
            RETURN QUERY SELECT p.id FROM pgml.projects AS p
                WHERE NOT members_only OR pg_catalog.pg_has_role(p.owner, 'MEMBER');
        END IF;
    END $$;
    CREATE FUNCTION pgml.visible_models(members_only boolean) RETURNS SETOF bigint
    LANGUAGE plpgsql STABLE SECURITY INVOKER AS $$
    -- The models of pgml.visible_projects(members_only) the current role can see.
    BEGIN
        IF pg_catalog.has_table_privilege('pgml.models', 'SELECT') THEN
            RETURN QUERY SELECT m.id FROM pgml.models AS m
                WHERE m.project_id IN (SELECT pgml.visible_projects(members_only));
        END IF;
    END $$;
    ALTER TABLE pgml.snapshots ENABLE ROW LEVEL SECURITY;
    CREATE POLICY visible ON pgml.snapshots FOR SELECT
        USING (project_id IN (SELECT pgml.visible_projects(false)));
    CREATE POLICY owner_members ON pgml.snapshots
        USING (project_id IN (SELECT pgml.visible_projects(true)));
    ALTER TABLE pgml.models ENABLE ROW LEVEL SECURITY;
    CREATE POLICY visible ON pgml.models FOR SELECT
        USING (project_id IN (SELECT pgml.visible_projects(false)));
    CREATE POLICY owner_members ON pgml.models
        USING (project_id IN (SELECT pgml.visible_projects(true)))
        WITH CHECK (project_id IN (SELECT pgml.visible_projects(true))
                    AND (snapshot_id IS NULL OR snapshot_id IN (
                        SELECT s.id FROM pgml.snapshots AS s
                        WHERE s.project_id = models.project_id)));
    ALTER TABLE pgml.deployments ENABLE ROW LEVEL SECURITY;
    CREATE POLICY visible ON pgml.deployments FOR SELECT
        USING (project_id IN (SELECT pgml.visible_projects(false)));
    CREATE POLICY owner_members ON pgml.deployments
        USING (project_id IN (SELECT pgml.visible_projects(true)))
        WITH CHECK (project_id IN (SELECT pgml.visible_projects(true))
                    AND model_id IN (SELECT m.id FROM pgml.models AS m
                                     WHERE m.project_id = deployments.project_id));
    ALTER TABLE pgml.files ENABLE ROW LEVEL SECURITY;
    CREATE POLICY visible ON pgml.files FOR SELECT
        USING (model_id IN (SELECT pgml.visible_models(false)));
    CREATE POLICY owner_members ON pgml.files
        USING (model_id IN (SELECT pgml.visible_models(true)));
    ALTER TABLE pgml.logs ENABLE ROW LEVEL SECURITY;
    CREATE POLICY visible ON pgml.logs FOR SELECT
        USING (coalesce(project_id, model_id) IS NOT NULL
               AND (project_id IS NULL OR project_id IN (SELECT pgml.visible_projects(false)))
               AND (model_id IS NULL OR model_id IN (SELECT pgml.visible_models(false))));
    CREATE POLICY owner_members ON pgml.logs
        USING (coalesce(project_id, model_id) IS NOT NULL
               AND (project_id IS NULL OR project_id IN (SELECT pgml.visible_projects(true)))
               AND (model_id IS NULL OR model_id IN (SELECT pgml.visible_models(true))))
        WITH CHECK (coalesce(project_id, model_id) IS NOT NULL
                    AND (project_id IS NULL OR project_id IN (SELECT pgml.visible_projects(true)))
                    AND (model_id IS NULL OR model_id IN (
                        SELECT m.id FROM pgml.models AS m
                        WHERE m.id IN (SELECT pgml.visible_models(true))
                        AND m.project_id = coalesce(logs.project_id, m.project_id))));
    CREATE OR REPLACE FUNCTION pgml.check_project_owner() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class
                                   WHERE oid = TG_RELID), 'MEMBER') THEN
            RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;  -- the catalog's owner
        END IF;
        IF TG_OP <> 'INSERT' AND NOT pg_catalog.pg_has_role(OLD.owner, 'MEMBER') THEN
            IF TG_OP = 'UPDATE' AND NEW.owner <> OLD.owner THEN
                RAISE EXCEPTION 'must be a member of role % to hand over project "%"',
                    OLD.owner, OLD.name USING ERRCODE = '42501';
            END IF;
            RAISE EXCEPTION 'must be a member of role % to % project "%"',
                OLD.owner, lower(TG_OP), OLD.name USING ERRCODE = '42501';
        END IF;
        IF TG_OP = 'DELETE' THEN
            RETURN OLD;
        END IF;
        IF (TG_OP = 'INSERT' OR NEW.owner <> OLD.owner)
                AND NOT pg_catalog.pg_has_role(NEW.owner, 'MEMBER') THEN
            RAISE EXCEPTION 'must be able to SET ROLE % to make it the owner of project "%"',
                NEW.owner, NEW.name USING ERRCODE = '42501';
        END IF;
        RETURN NEW;
    END $$;
    DROP TRIGGER check_owner ON pgml.projects;
    CREATE TRIGGER check_owner BEFORE INSERT OR UPDATE OR DELETE ON pgml.projects
        FOR EACH ROW EXECUTE FUNCTION pgml.check_project_owner();
    DROP FUNCTION pgml.serving_target(text);
    CREATE OR REPLACE FUNCTION pgml.authorize_serving(project_name text,
                                                      model_id bigint DEFAULT NULL)
    RETURNS void LANGUAGE plpgsql STABLE SECURITY INVOKER AS $$
    -- model_id: the deployed model the caller is to be served (looked up when not given).
    -- No SET search_path: it would cost a third of the call, and as SECURITY INVOKER it
    -- runs with no more rights than its caller; every name in it is qualified.
    DECLARE
        project bigint;
    BEGIN
        IF project_name IS NULL THEN
            RETURN;
        END IF;
        IF NOT pg_catalog.has_table_privilege('pgml.projects', 'SELECT') THEN
            RAISE EXCEPTION 'permission denied for table projects' USING ERRCODE = '42501',
                HINT = 'Serving a project needs SELECT on pgml.projects and pgml.models, and '
                       'its rows in both visible under their row-level security policies.';
        END IF;
        project := (SELECT p.id FROM pgml.projects AS p WHERE p.name = project_name);
        IF project IS NULL THEN  -- missing, or hidden from the current role: the same answer
            RAISE EXCEPTION 'project "%" does not exist', project_name USING ERRCODE = '42704',
                HINT = 'pgml.tune creates projects; SELECT name FROM pgml.projects lists them.';
        END IF;
        IF model_id IS NULL THEN
            model_id := (SELECT d.model_id FROM pgml.deployments AS d WHERE d.project_id = project
                         ORDER BY d.created_at DESC, d.id DESC LIMIT 1);
            IF model_id IS NULL THEN
                RETURN;  -- nothing deployed: serving says so
            END IF;
        END IF;
        PERFORM FROM pgml.models AS m WHERE m.id = model_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'permission denied for the deployed model of project "%"',
                project_name
                USING ERRCODE = '42501',
                DETAIL = format('The current role cannot read model %s in pgml.models.',
                                model_id),
                HINT = 'Serving a project needs SELECT on pgml.projects and pgml.models, and '
                       'its rows in both visible under their row-level security policies.';
        END IF;
    END $$;
    COMMENT ON FUNCTION pgml.authorize_serving(text, bigint) IS
        'Returns when the current role may be served the project (and its deployed model '
        'model_id); raises 42704 when it cannot see the project (as when there is none), '
        '42501 when it may not read the project or its model.';
    """,
    # 6: how a model of pgml.train was trained, in PostgresML's column names: the runtime it
    # was asked for, its number of features and its hyperparameter search.
    """
    ALTER TABLE pgml.models
        ADD COLUMN runtime text,
        ADD COLUMN num_features integer,
        ADD COLUMN search text,
        ADD COLUMN search_params jsonb,
        ADD COLUMN search_args jsonb;
    """,
    # 7: PostgresML's vector functions and aggregates, run by PostgreSQL itself.
    vectors.MIGRATION,
    # 8: which proxy runs a training, and a cancel asked of it through another proxy
    # (see handlers.trainings).
    """
    ALTER TABLE pgml.models
        ADD COLUMN trained_by text,
        ADD COLUMN cancel_requested_at timestamptz;
    COMMENT ON COLUMN pgml.models.trained_by IS
        'The name of the pgml-proxy that runs (or ran) this model''s training.';
    COMMENT ON COLUMN pgml.models.cancel_requested_at IS
        'When a cancel of this training was asked through a proxy other than the one '
        'running it.';
    """,
]
"""Migration N brings the catalog from version N-1 to N. Never edit one that shipped:
append a new one."""

VERSION = len(MIGRATIONS)


class Connection(Protocol):
    """The part of an asyncpg connection the catalog uses."""

    async def execute(self, query: str, *args: Any) -> str: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    async def fetchrow(self, query: str, *args: Any) -> Any: ...

    def transaction(self) -> Any: ...


async def ensure_catalog(connection: Connection) -> int:
    """Create or migrate the catalog in the connection's database; return its version
    (on a hot standby: read it as it is, 0 where there is none)."""
    current = await _version(connection)
    if current >= VERSION:
        return current
    if await connection.fetchval("SELECT pg_is_in_recovery()"):
        return current  # a hot standby: the catalog is its primary's, read as it is
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        current = await _version(connection)  # another session may have just done it
        if current == 0:
            await _refuse_foreign(connection)
        await connection.execute(
            "CREATE SCHEMA IF NOT EXISTS pgml; "
            "CREATE TABLE IF NOT EXISTS pgml.catalog_version "
            "(version integer NOT NULL, migrated_at timestamptz NOT NULL DEFAULT now())"
        )
        for number in range(current + 1, VERSION + 1):
            log.info("migrating the pgml catalog to version %d", number)
            await connection.execute(MIGRATIONS[number - 1])
            await connection.execute(
                "INSERT INTO pgml.catalog_version (version) VALUES ($1)", number
            )
    return VERSION


async def installed(connection: Connection) -> bool:
    """Whether the database has this proxy's catalog (at any version)."""
    return await _version(connection) > 0


_FOREIGN = """
SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pgml'),
       EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n
               ON n.oid = c.relnamespace WHERE n.nspname = 'pgml' AND c.relname = 'projects')
"""


async def _refuse_foreign(connection: Connection) -> None:
    """A schema pgml that another catalog holds (PostgresML's own, as its extension
    creates it) is left as it is: the caller is told how to make room."""
    row = await connection.fetchrow(_FOREIGN)
    extension, projects = row[0], row[1]
    if not (extension or projects):
        return
    detail = (
        "The PostgresML extension is installed in this database."
        if extension
        else "Schema pgml has a table projects but no pgml.catalog_version: PostgresML's "
        "catalog or another tool's."
    )
    raise PgmlError(
        "55000",
        'schema "pgml" holds a catalog that pgml-proxy did not create',
        detail=detail,
        hint="Keep its data under another name (ALTER SCHEMA pgml RENAME TO pgml_old) or "
        "drop it (DROP EXTENSION pgml, DROP SCHEMA pgml CASCADE); pgml-proxy then creates "
        "its own catalog.",
    )


async def _version(connection: Connection) -> int:
    # pg_class read with the statement's own snapshot: it sees a catalog another session
    # committed while this one waited for the lock (a name lookup could use a stale cache).
    exists = await connection.fetchval(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = 'pgml' AND c.relname = 'catalog_version')"
    )
    if not exists:
        return 0
    version = await connection.fetchval(
        "SELECT coalesce(max(version), 0) FROM pgml.catalog_version"
    )
    return int(version)
