"""What the caller may do with the catalog, asked of PostgreSQL as the caller.

The proxy writes the catalog through its service connection, so before it writes for a
caller it asks, in the caller's own session (its current role after ``SET ROLE``, inside
its transaction), whether that role could make the write itself: ``INSERT`` on the
tables written, and for an existing project membership in the project's owner role.
Serving asks ``pgml.authorize_serving`` (see :mod:`handlers.catalog`), or for a model named
by its id reads the model's row, so that the grants and row-level security policies on
``pgml.projects`` and ``pgml.models`` decide.  A project
the caller cannot see is answered as one that does not exist; the catalog's own policies
hold the same rules for SQL written straight to its tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from handlers.errors import PgmlError
from handlers.projects import Project, missing_model
from handlers.signatures import Args, CallContext

PROJECTS = "pgml.projects"
MODELS = "pgml.models"
DEPLOYMENTS = "pgml.deployments"
SNAPSHOTS = "pgml.snapshots"


class AsksSQL(Protocol):
    """Runs SQL as the role being asked about; rows as text values."""

    async def run_sql(self, sql: str, params: Sequence[str | None] = ()) -> list[list[Any]]: ...


@dataclass(frozen=True, slots=True)
class Role:
    """The role a check was made for: the caller's ``current_user``."""

    oid: int
    name: str
    quoted: str
    """As an identifier in SQL (``quote_ident``)."""


async def require_read(asker: AsksSQL, tables: Sequence[str]) -> None:
    """PostgreSQL's own error (42501: no USAGE on schema pgml, or no SELECT on a table)
    when the current role could not read ``tables`` itself, asked before the proxy's
    service connection reads their rows for it, with a statement that reads no row: so
    that what the proxy answers (a project that exists or not) is only what the role
    could have read."""
    await asker.run_sql(f"SELECT FROM {', '.join(tables)} WHERE false")


async def require(
    asker: AsksSQL,
    function: str,
    inserts: Sequence[str],
    project: Project | None = None,
    hint: str = "",
    hidden: PgmlError | None = None,
    unseen: Sequence[str] = (),
) -> Role:
    """The current role, when it holds INSERT on each of ``inserts`` and (for a project)
    can see the project's row and is a member of its owner; otherwise 42501 naming what is
    missing.  A project the role cannot see gets the answer a missing one gets, so that it
    tells nothing: ``hidden`` at once, or else the INSERT privileges a new project needs
    (``unseen`` as well) are checked and then a 42501 names the project alone.

    ``hint`` is added to the GRANT the error suggests (another way to proceed)."""
    tables = [*unseen, *inserts]
    columns = [f"has_table_privilege(${i + 1}::text, 'INSERT')::text" for i in range(len(tables))]
    params: list[str | None] = list(tables)
    if project is not None:
        params.append(str(project.id))
        columns.append(
            f"EXISTS (SELECT FROM pgml.visible_projects(false) AS v (id) "
            f"WHERE v.id = ${len(params)}::text::bigint)::text"
        )
        params.append(str(project.owner_oid))
        owner = f"${len(params)}::text::oid"
        columns.append(
            f"(EXISTS (SELECT FROM pg_catalog.pg_roles WHERE oid = {owner}) "
            f"AND pg_catalog.pg_has_role({owner}, 'MEMBER'))::text"
        )
    rows = await asker.run_sql(
        "SELECT r.oid::text, r.rolname::text, quote_ident(r.rolname)"
        + "".join(", " + c for c in columns)
        + " FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user",
        params,
    )
    oid, name, quoted, *answers = rows[0]
    role = Role(int(oid), str(name), str(quoted))
    seen = project is None or answers[len(tables)] == "true"
    if not seen and hidden is not None:
        raise hidden
    needed = tables if not seen else inserts
    missing = [t for t, ok in zip(tables, answers, strict=False) if t in needed and ok != "true"]
    if missing:
        listed = ", ".join(missing)
        plural = len(missing) > 1
        raise PgmlError(
            "42501",
            f"permission denied for table{'s' if plural else ''} {listed}: {function} needs "
            f"the INSERT privilege on {'them' if plural else 'it'}",
            hint=f"GRANT INSERT ON {listed} TO {role.quoted};{hint}",
        )
    if project is not None and not seen:
        raise PgmlError("42501", f'permission denied for project "{project.name}"')
    if project is not None and answers[-1] != "true":
        raise not_owner(function, project, role)
    return role


def not_owner(function: str, project: Project, role: Role) -> PgmlError:
    literal = "'" + project.name.replace("'", "''") + "'"
    return PgmlError(
        "42501",
        f'permission denied for project "{project.name}": it belongs to role {project.owner}',
        detail=f"{function} of an existing project needs membership in the project's owner role.",
        hint=f"GRANT {project.owner} TO {role.quoted}; or a member of {project.owner} hands it "
        f"over: UPDATE pgml.projects SET owner = '{role.quoted}' WHERE name = {literal};",
    )


CATALOG_READS = (PROJECTS, MODELS, SNAPSHOTS)
"""What ``pgml.tune`` and ``pgml.train`` read for the caller: whether the project exists,
and its last run's relation, label and model, the defaults of the next."""


async def require_tune(asker: AsksSQL, project: Project | None, deploys: bool) -> Role:
    """``pgml.tune``: INSERT on models (and projects for a new project, deployments when it
    may deploy the model), and for an existing project membership in its owner.  One the
    caller cannot see is checked as a new one, then refused: its name is taken."""
    inserts = [MODELS, DEPLOYMENTS] if deploys else [MODELS]
    hint = " Or tune with automatic_deploy => false." if deploys else ""
    if project is None:
        return await require(asker, "pgml.tune", [PROJECTS, *inserts], hint=hint)
    return await require(asker, "pgml.tune", inserts, project, hint, unseen=[PROJECTS])


async def require_deploy(asker: AsksSQL, project: Project, hidden: PgmlError | None = None) -> Role:
    """``pgml.deploy`` (and the dashboard's Deploy): INSERT on deployments and membership in
    the project's owner; ``hidden`` when the caller cannot see the project."""
    return await require(asker, "pgml.deploy", [DEPLOYMENTS], project, hidden=hidden)


async def require_cancel(asker: AsksSQL, project: Project) -> Role:
    """Cancelling a training (the dashboard's Cancel) changes the project's model as tuning
    does: INSERT on models and membership in the project's owner."""
    return await require(asker, "cancelling a training", [MODELS], project)


SERVING = "SELECT pgml.authorize_serving($1, $2::bigint)"


async def authorize_serving(ctx: CallContext, args: Args) -> None:
    """Serve ``args[0]``'s project only to a role that can read its row and its deployed
    model's (the hook of ``predict``, ``predict_proba`` and ``generate``).  The deployed
    model comes from the proxy's cache of deployments, so the check is one cheap
    statement; once it has passed in a session it rides with the statement that returns
    the call's result (no round trip of its own), so a REVOKE or SET ROLE counts from
    the next statement on.  A project that does not exist is asked about too, so that
    PostgreSQL answers it exactly as one the role cannot see.  The base model a deployed
    adapter is served on is checked as if the caller had named it (``--allow-models``,
    ``pg_read_server_files`` for a server path), asked here while the session may be used;
    its refusal names the base model only to a role that may be served the project."""
    if not args or args[0] is None:
        return
    project = str(args[0])
    try:
        deployed = await ctx.services.deployment(ctx.database, project)
    except PgmlError:
        deployed = None  # none, or nothing deployed: the project's own row decides what is said
    model = None if deployed is None else str(deployed.model_id)
    await ctx.session.check(SERVING, [project, model], ("serving", project))
    if deployed is None:
        return
    base = await ctx.services.served_base(ctx.database, deployed)
    if base is None:
        return
    try:
        await ctx.services.check_model_for(ctx, base)
    except PgmlError:  # the project's own refusal first, should it still ride with a statement
        await ctx.session.run_sql(SERVING, [project, model])
        raise


SERVING_MODEL = (
    "SELECT EXISTS (SELECT FROM pgml.models AS m JOIN pgml.projects AS p "
    "ON p.id = m.project_id WHERE m.id = $1::bigint)::text"
)


async def authorize_serving_model(ctx: CallContext, args: Args) -> None:
    """Serve a model named by its id (``predict(model_id, ...)``) only to a role that can
    read its row and its project's in the catalog, as :func:`authorize_serving` does for a
    project; a model the role cannot see is answered as one that does not exist."""
    if not args or args[0] is None:
        return
    model_id = int(args[0])
    ((visible,),) = await ctx.session.run_sql(SERVING_MODEL, [str(model_id)])
    if visible != "true":
        raise missing_model(model_id)
    base = await ctx.services.served_base(
        ctx.database, await ctx.services.served(ctx.database, model_id)
    )
    if base is not None:
        await ctx.services.check_model_for(ctx, base)
