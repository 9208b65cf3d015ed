"""PostgreSQL decides who may serve, tune and deploy: real roles through psql and psycopg.

Each refusal is SQLSTATE 42501 and leaves the catalog as it was; the matching GRANT (or
membership in the project's owner) then lets the same call through.  The superuser that
set the proxy up keeps every right (the rest of the suite runs as it)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import psycopg
import pytest
from psycopg import pq

from tests.integration.test_serving import make_reviews
from tests.integration.test_tune_errors import (
    Failure,
    fail_with_psql,
    fail_with_psycopg,
    lit,
    tune_sql,
)
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

CLIENTS = {"psql": fail_with_psql, "psycopg": fail_with_psycopg}
TEXT_OID = 25
FLOAT4_OID = 700


@dataclass
class Roles:
    """Login roles of this module (trusted from 127.0.0.1), and a team role."""

    alice: str
    bob: str
    team: str


@pytest.fixture(scope="module")
def roles(cluster: PostgresCluster, direct: psycopg.Connection[Any]) -> Iterator[Roles]:
    suffix = uuid.uuid4().hex[:6]
    found = Roles(f"alice_{suffix}", f"bob_{suffix}", f"team_{suffix}")
    for role in (found.alice, found.bob):
        cluster.psql(f"CREATE ROLE {role} LOGIN")
    cluster.psql(f"CREATE ROLE {found.team} NOLOGIN")
    yield found
    for role in (found.alice, found.bob, found.team):
        if direct.execute("SELECT to_regclass('pgml.projects') IS NOT NULL").fetchone() == (True,):
            direct.execute(f"DELETE FROM pgml.projects WHERE owner::oid = '{role}'::regrole::oid")
        cluster.psql(f"DROP OWNED BY {role}; DROP ROLE {role}")


@pytest.fixture(scope="module")
def reviews(cluster: PostgresCluster, roles: Roles) -> Iterator[str]:
    """A view of reviews (text, label) every role may read."""
    table = f"access_{uuid.uuid4().hex[:8]}"
    make_reviews(cluster, table)
    cluster.psql(
        f"CREATE VIEW {table}_in AS SELECT text, label FROM {table}; "
        f"GRANT SELECT ON {table}_in TO PUBLIC"
    )
    yield f"{table}_in"
    cluster.psql(f"DROP TABLE {table} CASCADE")


@pytest.fixture(scope="module")
def project(
    tuner: ProxyProcess, direct: psycopg.Connection[Any], reviews: str, roles: Roles
) -> str:
    """A project of two models (the first deployed), handed over to the team role."""
    name = unique("team_project")
    with psycopg.connect(tuner.dsn(), autocommit=True) as conn:
        conn.execute(tune_sql(name, reviews)).fetchall()
        conn.execute(tune_sql(name, reviews, automatic_deploy="false")).fetchall()
    direct.execute("UPDATE pgml.projects SET owner = %s WHERE name = %s", [roles.team, name])
    return name


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def catalog_rows(direct: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the proxy writes for callers, to compare before and after a refusal."""
    return {
        table: [
            tuple(r) for r in direct.execute(f"SELECT * FROM pgml.{table} ORDER BY id").fetchall()
        ]
        for table in ("projects", "snapshots", "models", "deployments")
    }


def models(direct: psycopg.Connection[Any], project: str) -> list[int]:
    rows = direct.execute(
        "SELECT m.id FROM pgml.models AS m JOIN pgml.projects AS p ON p.id = m.project_id "
        "WHERE p.name = %s ORDER BY m.id",
        [project],
    ).fetchall()
    return [int(r[0]) for r in rows]


def deployed(direct: psycopg.Connection[Any], project: str) -> int | None:
    row = direct.execute("SELECT id FROM pgml.deployed_models WHERE name = %s", [project])
    found = row.fetchone()
    return None if found is None else int(found[0])


def refused(
    client: Callable[[str, str], Failure],
    dsn: str,
    sql: str,
    direct: psycopg.Connection[Any],
) -> Failure:
    """The call fails with 42501, the session stays usable and the catalog is unchanged."""
    before = catalog_rows(direct)
    failure = client(dsn, sql)
    assert failure.sqlstate == "42501", failure
    assert failure.usable_after, failure
    assert catalog_rows(direct) == before
    return failure


def ok(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


@pytest.fixture(params=sorted(CLIENTS))
def client(request: pytest.FixtureRequest) -> Callable[[str, str], Failure]:
    return CLIENTS[request.param]


@pytest.fixture
def grants(cluster: PostgresCluster) -> Iterator[Callable[[str], None]]:
    """GRANT statements (and memberships) a test makes, revoked afterwards."""
    made: list[str] = []

    def grant(statement: str) -> None:
        cluster.psql(statement)
        made.append(statement)

    yield grant
    for statement in reversed(made):
        revoke = statement.replace("GRANT", "REVOKE", 1).replace(" TO ", " FROM ", 1)
        cluster.psql(revoke)


# --- deploy ------------------------------------------------------------------------------


def test_deploy_by_id_needs_insert_on_deployments_and_the_owner(
    tuner: ProxyProcess,
    direct: psycopg.Connection[Any],
    project: str,
    roles: Roles,
    client: Callable[[str, str], Failure],
    grants: Callable[[str], None],
) -> None:
    first, second = models(direct, project)
    alice = tuner.dsn(roles.alice)
    sql = f"SELECT * FROM pgml.deploy({second})"
    failure = refused(client, alice, sql, direct)
    assert failure.message == (
        "permission denied for table pgml.deployments: pgml.deploy needs the INSERT privilege on it"
    )
    assert failure.hint == f"GRANT INSERT ON pgml.deployments TO {roles.alice};"

    grants(f"GRANT INSERT ON pgml.deployments TO {roles.alice}")
    failure = refused(client, alice, sql, direct)  # the grant alone is not enough
    assert failure.message == (
        f'permission denied for project "{project}": it belongs to role {roles.team}'
    )
    assert f"GRANT {roles.team} TO {roles.alice}" in failure.hint
    assert "UPDATE pgml.projects SET owner" in failure.hint

    grants(f"GRANT {roles.team} TO {roles.alice}")
    assert ok(alice, sql) == [(project, "specific", "distilbert-base-uncased")]
    assert deployed(direct, project) == second
    ok(tuner.dsn(), f"SELECT * FROM pgml.deploy({first})")


def test_deploy_by_strategy_needs_the_same(
    tuner: ProxyProcess,
    direct: psycopg.Connection[Any],
    project: str,
    roles: Roles,
    client: Callable[[str, str], Failure],
    grants: Callable[[str], None],
) -> None:
    first, second = models(direct, project)
    assert deployed(direct, project) == first
    bob = tuner.dsn(roles.bob)
    for strategy in ("most_recent", "rollback", "best_score"):
        sql = f"SELECT * FROM pgml.deploy({lit(project)}, {lit(strategy)})"
        assert "pgml.deployments" in refused(client, bob, sql, direct).message
    grants(f"GRANT INSERT ON pgml.deployments TO {roles.bob}")
    sql = f"SELECT * FROM pgml.deploy({lit(project)}, 'most_recent')"
    assert "belongs to role" in refused(client, bob, sql, direct).message
    grants(f"GRANT {roles.team} TO {roles.bob}")
    assert ok(bob, sql) == [(project, "most_recent", "distilbert-base-uncased")]
    assert deployed(direct, project) == second
    ok(bob, f"SELECT * FROM pgml.deploy({lit(project)}, 'rollback')")
    assert deployed(direct, project) == first
    # Errors about the call itself still come first, and still name it.
    failure = fail_with_psycopg(bob, "SELECT * FROM pgml.deploy('no such project', 'rollback')")
    assert failure.sqlstate == "42704"


def test_set_role_inside_a_superuser_session(
    tuner: ProxyProcess, direct: psycopg.Connection[Any], project: str, roles: Roles
) -> None:
    """The check is made as the session's current role: SET ROLE and RESET ROLE count at once,
    inside a transaction too."""
    _, second = models(direct, project)
    before = catalog_rows(direct)
    with psycopg.connect(tuner.dsn(), autocommit=True) as conn:
        conn.execute(f"SET ROLE {roles.alice}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SELECT * FROM pgml.deploy({second})")
        assert catalog_rows(direct) == before
        conn.execute("RESET ROLE")
        with conn.transaction():
            conn.execute(f"SET LOCAL ROLE {roles.alice}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT * FROM pgml.deploy({second})")
            raise psycopg.Rollback
        assert catalog_rows(direct) == before
        assert conn.execute(f"SELECT * FROM pgml.deploy({second})").fetchall()
    assert deployed(direct, project) == second
    ok(tuner.dsn(), f"SELECT * FROM pgml.deploy({lit(project)}, 'rollback')")


# --- tune --------------------------------------------------------------------------------


def test_tune_a_new_project_needs_insert_and_records_the_owner(
    tuner: ProxyProcess,
    direct: psycopg.Connection[Any],
    reviews: str,
    roles: Roles,
    client: Callable[[str, str], Failure],
    grants: Callable[[str], None],
) -> None:
    name = unique("alices")
    alice = tuner.dsn(roles.alice)
    failure = refused(client, alice, tune_sql(name, reviews), direct)
    assert failure.message.startswith(
        "permission denied for tables pgml.projects, pgml.models, pgml.deployments: pgml.tune"
    )
    assert failure.hint == (
        f"GRANT INSERT ON pgml.projects, pgml.models, pgml.deployments TO {roles.alice}; "
        "Or tune with automatic_deploy => false."
    )
    grants(f"GRANT INSERT ON pgml.projects, pgml.models TO {roles.alice}")
    failure = refused(client, alice, tune_sql(name, reviews), direct)  # it would deploy
    assert failure.message.startswith("permission denied for table pgml.deployments: pgml.tune")
    sql = tune_sql(name, reviews, automatic_deploy="false")
    assert ok(alice, sql) == [(name, "text-classification", "distilbert-base-uncased", False)]
    owner = direct.execute("SELECT owner::text FROM pgml.projects WHERE name = %s", [name])
    assert owner.fetchone() == (roles.alice,)


def test_tune_another_roles_project_is_refused_even_with_the_grants(
    tuner: ProxyProcess,
    direct: psycopg.Connection[Any],
    reviews: str,
    roles: Roles,
    client: Callable[[str, str], Failure],
    grants: Callable[[str], None],
) -> None:
    name = unique("alices_own")
    grants(f"GRANT INSERT ON pgml.projects, pgml.models, pgml.deployments TO {roles.alice}")
    assert ok(tuner.dsn(roles.alice), tune_sql(name, reviews))[0][3] is True
    deployed_before = deployed(direct, name)
    # bob may tune and deploy, but the project is alice's: no model of his goes into it.
    grants(f"GRANT INSERT ON pgml.projects, pgml.models, pgml.deployments TO {roles.bob}")
    bob = tuner.dsn(roles.bob)
    failure = refused(client, bob, tune_sql(name, reviews), direct)
    assert failure.message == (
        f'permission denied for project "{name}": it belongs to role {roles.alice}'
    )
    failure = refused(client, bob, f"SELECT * FROM pgml.deploy({lit(name)}, 'rollback')", direct)
    assert "belongs to role" in failure.message
    assert deployed(direct, name) == deployed_before
    # Membership in the owner is what lets another role in.
    grants(f"GRANT {roles.alice} TO {roles.bob}")
    assert ok(bob, tune_sql(name, reviews, automatic_deploy="false"))[0][3] is False
    assert len(models(direct, name)) == 2


def test_handing_a_project_over(
    tuner: ProxyProcess,
    cluster: PostgresCluster,
    direct: psycopg.Connection[Any],
    project: str,
    roles: Roles,
    grants: Callable[[str], None],
) -> None:
    """The owner is an UPDATE by a role that may make it: as ALTER ... OWNER TO, a member of
    the old owner that can SET ROLE to the new one (or the catalog's owner)."""
    grants(f"GRANT UPDATE (owner) ON pgml.projects TO {roles.bob}")
    hand_over = f"UPDATE pgml.projects SET owner = {lit(roles.bob)} WHERE name = {lit(project)}"
    with psycopg.connect(cluster.dsn(roles.bob), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as raised:
            conn.execute(hand_over)
        assert f"must be a member of role {roles.team}" in str(raised.value)
        grants(f"GRANT {roles.team} TO {roles.bob}")
        conn.execute(hand_over)
        assert conn.execute(
            "SELECT owner::text FROM pgml.projects WHERE name = %s", [project]
        ).fetchone() == (roles.bob,)
        back = f"UPDATE pgml.projects SET owner = {lit(roles.alice)} WHERE name = {lit(project)}"
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as raised:
            conn.execute(back)  # bob cannot SET ROLE alice
        assert f"must be able to SET ROLE {roles.alice}" in str(raised.value)
    direct.execute("UPDATE pgml.projects SET owner = %s WHERE name = %s", [roles.team, project])


# --- serving -----------------------------------------------------------------------------

PREDICT = "SELECT pgml.predict({project}, 'great fun')"


@pytest.fixture
def restore_catalog_grants(cluster: PostgresCluster) -> Iterator[None]:
    yield
    cluster.psql(
        "GRANT SELECT ON pgml.projects, pgml.models TO PUBLIC; "
        "DROP POLICY IF EXISTS team_only ON pgml.projects; "
        "ALTER TABLE pgml.projects DISABLE ROW LEVEL SECURITY; "
        "DROP POLICY IF EXISTS unfinished_only ON pgml.models"
    )


def test_predict_after_revoke_select_on_models(
    tuner: ProxyProcess,
    cluster: PostgresCluster,
    project: str,
    roles: Roles,
    client: Callable[[str, str], Failure],
    restore_catalog_grants: None,
) -> None:
    """A REVOKE takes effect at once, in a session that stays open too."""
    predict = PREDICT.format(project=lit(project))
    alice = tuner.dsn(roles.alice)
    with psycopg.connect(alice, autocommit=True) as session:
        assert session.execute(predict).fetchone() in ((0.0,), (1.0,))
        cluster.psql("REVOKE SELECT ON pgml.models FROM PUBLIC")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as raised:
            session.execute(predict)
        assert "permission denied for table models" in str(raised.value)
        assert session.execute("SELECT 1").fetchone() == (1,)
        failure = client(alice, predict)
        assert failure.sqlstate == "42501" and failure.usable_after
        assert ok(tuner.dsn(), predict)  # the catalog's owner is still served
        per_row = f"SELECT pgml.predict_proba(p, t) FROM (VALUES ({lit(project)}, 'a')) AS v(p, t)"
        # alice is refused per-row calls, array inputs and project names read from rows
        for sql in (
            f"SELECT pgml.predict({lit(project)}, t) FROM (VALUES ('a'), ('b')) AS v(t)",
            f"SELECT pgml.predict({lit(project)}, ARRAY['a', 'b'])",
            per_row,
        ):
            assert fail_with_psycopg(alice, sql).sqlstate == "42501", sql
        cluster.psql(f"GRANT SELECT ON pgml.models TO {roles.alice}")
        assert session.execute(predict).fetchone() in ((0.0,), (1.0,))
        assert len(session.execute(per_row).fetchall()) == 1
    cluster.psql(f"REVOKE SELECT ON pgml.models FROM {roles.alice}")


def test_predict_under_a_row_level_security_policy(
    tuner: ProxyProcess,
    cluster: PostgresCluster,
    project: str,
    roles: Roles,
    client: Callable[[str, str], Failure],
    grants: Callable[[str], None],
    restore_catalog_grants: None,
) -> None:
    cluster.psql(
        "ALTER TABLE pgml.projects ENABLE ROW LEVEL SECURITY; "
        "CREATE POLICY team_only ON pgml.projects USING (pg_has_role(owner, 'MEMBER'))"
    )
    alice = tuner.dsn(roles.alice)
    predict = PREDICT.format(project=lit(project))
    failure = client(alice, predict)  # a project alice cannot see is one that does not exist
    assert failure.sqlstate == "42704" and failure.usable_after
    assert failure.message == f'project "{project}" does not exist'
    # The views read the tables as the reader: the policy applies through them too.
    assert ok(alice, f"SELECT * FROM pgml.deployed_models WHERE name = {lit(project)}") == []
    generated = f"SELECT pgml.generate({lit(project)}, 'x')"
    assert fail_with_psycopg(alice, generated).sqlstate == "42704"
    assert fail_with_psycopg(alice, PREDICT.format(project="'nothing here'")).sqlstate == "42704"
    grants(f"GRANT {roles.team} TO {roles.alice}")
    assert ok(alice, predict)[0][0] in (0.0, 1.0)
    assert len(ok(alice, f"SELECT * FROM pgml.deployed_models WHERE name = {lit(project)}")) == 1


def test_predict_when_a_policy_hides_the_deployed_model(
    tuner: ProxyProcess,
    cluster: PostgresCluster,
    project: str,
    roles: Roles,
    client: Callable[[str, str], Failure],
    restore_catalog_grants: None,
) -> None:
    cluster.psql(  # restrictive: the catalog's own policies let every reader see the row
        "CREATE POLICY unfinished_only ON pgml.models AS RESTRICTIVE USING (status <> 'successful')"
    )
    predict = PREDICT.format(project=lit(project))
    failure = client(tuner.dsn(roles.alice), predict)
    assert failure.sqlstate == "42501" and failure.usable_after
    assert failure.message == f'permission denied for the deployed model of project "{project}"'
    # The catalog function answers the same straight from PostgreSQL, for any client.
    check = f"SELECT pgml.authorize_serving({lit(project)})"
    assert fail_with_psql(cluster.dsn(roles.alice), check).sqlstate == "42501"
    assert ok(cluster.dsn(), check) == [("",)]  # the catalog's owner passes
    assert ok(tuner.dsn(), predict)[0][0] in (0.0, 1.0)


def test_a_model_named_by_its_id_is_served_only_to_a_role_that_sees_it(
    tuner: ProxyProcess,
    cluster: PostgresCluster,
    direct: psycopg.Connection[Any],
    project: str,
    roles: Roles,
    grants: Callable[[str], None],
    restore_catalog_grants: None,
) -> None:
    """``pgml.predict(model_id, ...)``: the model's row and its project's decide, as for a
    project; a model the role cannot see is answered as one that does not exist."""
    (model_id,) = direct.execute(
        "SELECT m.id FROM pgml.models AS m JOIN pgml.projects AS p ON p.id = m.project_id "
        "WHERE p.name = %s ORDER BY m.id LIMIT 1",
        [project],
    ).fetchone() or (None,)
    by_id = f"SELECT pgml.predict({model_id}, ARRAY[1, 2])"
    alice = tuner.dsn(roles.alice)
    served = fail_with_psycopg(alice, by_id)  # let in; then a text model refuses numbers
    assert served.sqlstate == "0A000" and "takes its input as text" in served.message
    cluster.psql(
        "ALTER TABLE pgml.projects ENABLE ROW LEVEL SECURITY; "
        "CREATE POLICY team_only ON pgml.projects USING (pg_has_role(owner, 'MEMBER'))"
    )
    hidden = fail_with_psycopg(alice, by_id)
    assert (hidden.sqlstate, hidden.message) == ("42704", f"model {model_id} does not exist")
    assert hidden.usable_after
    missing = fail_with_psycopg(alice, "SELECT pgml.predict(2000000000, ARRAY[1, 2])")
    assert (missing.sqlstate, missing.message) == ("42704", "model 2000000000 does not exist")
    grants(f"GRANT {roles.team} TO {roles.alice}")
    assert fail_with_psycopg(alice, by_id).sqlstate == "0A000"
    cluster.psql("REVOKE SELECT ON pgml.models FROM PUBLIC")
    refused = fail_with_psycopg(alice, by_id)
    assert refused.sqlstate == "42501" and "permission denied for table models" in refused.message


def test_serving_follows_set_role(
    tuner: ProxyProcess,
    cluster: PostgresCluster,
    project: str,
    roles: Roles,
    restore_catalog_grants: None,
) -> None:
    cluster.psql("REVOKE SELECT ON pgml.models FROM PUBLIC")
    predict = PREDICT.format(project=lit(project))
    with psycopg.connect(tuner.dsn(), autocommit=True) as conn:
        assert conn.execute(predict).fetchone() in ((0.0,), (1.0,))
        conn.execute(f"SET ROLE {roles.alice}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(predict)
        conn.execute("RESET ROLE")
        assert conn.execute(predict).fetchone() in ((0.0,), (1.0,))
        conn.execute(f"SET SESSION AUTHORIZATION {roles.alice}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(predict)
        conn.execute("RESET SESSION AUTHORIZATION")
        assert conn.execute(predict).fetchone() in ((0.0,), (1.0,))


# --- a project the caller cannot see is one that does not exist --------------------------


@dataclass(frozen=True)
class Answers:
    """What a client hears for a prepared ``pgml.predict(project, $1)``: its result type at
    Describe, and every field of Execute's error (None when it ran)."""

    result_type: int
    error: dict[str, bytes | None] | None


def prepared(dsn: str, sql: str) -> Answers:
    with psycopg.connect(dsn, autocommit=True) as conn:
        pgconn = conn.pgconn
        made = pgconn.prepare(b"probe", sql.encode())
        assert made.status == pq.ExecStatus.COMMAND_OK, made.error_message
        result_type = pgconn.describe_prepared(b"probe").ftype(0)
        ran = pgconn.exec_prepared(b"probe", [b"great fun"])
        if ran.status == pq.ExecStatus.TUPLES_OK:
            return Answers(result_type, None)
        return Answers(result_type, {f.name: ran.error_field(f) for f in pq.DiagnosticField})


def simple(dsn: str, sql: str) -> dict[str, str | None]:
    """Every field of the error a simple query gets."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(sql, prepare=False)
        diag = raised.value.diag
        fields = [f for f in dir(diag) if not f.startswith("_")]
        return {f: getattr(diag, f) for f in fields}


@pytest.fixture
def members_only(cluster: PostgresCluster, restore_catalog_grants: None) -> None:
    """The README's recipe: pgml.projects and pgml.models read only by those granted, and
    a project only by its owner's members."""
    cluster.psql(
        "REVOKE SELECT ON pgml.projects, pgml.models FROM PUBLIC; "
        "ALTER TABLE pgml.projects ENABLE ROW LEVEL SECURITY; "
        "CREATE POLICY team_only ON pgml.projects USING (pg_has_role(owner, 'MEMBER'))"
    )


def test_a_hidden_project_is_answered_as_a_missing_one(
    tuner: ProxyProcess,
    direct: psycopg.Connection[Any],
    project: str,
    reviews: str,
    roles: Roles,
    grants: Callable[[str], None],
    members_only: None,
) -> None:
    """Describe and Execute of a project alice cannot see are byte for byte those of the
    same name once the project is gone (renamed away by the superuser)."""
    alice = tuner.dsn(roles.alice)
    calls = {
        "predict": f"SELECT pgml.predict({lit(project)}, $1)",
        "deploy": f"SELECT * FROM pgml.deploy({lit(project)}, 'most_recent', nullif($1, 'x'))",
    }
    queries = (
        PREDICT.format(project=lit(project)),
        f"SELECT pgml.predict_proba({lit(project)}, t) FROM (VALUES ('a'), ('b')) AS v(t)",
        f"SELECT * FROM pgml.deploy({lit(project)}, 'rollback')",
        tune_sql(project, reviews),  # alice may not make projects: that is what she hears
    )

    def hidden_then_missing() -> dict[str, Any]:
        hidden = {name: prepared(alice, sql) for name, sql in calls.items()}
        hidden |= {sql: simple(alice, sql) for sql in queries}
        away = "UPDATE pgml.projects SET name = %s WHERE name = %s"
        direct.execute(away, [project + "_away", project])
        try:
            missing = {name: prepared(alice, sql) for name, sql in calls.items()}
            missing |= {sql: simple(alice, sql) for sql in queries}
        finally:
            direct.execute(away, [project, project + "_away"])
        assert hidden == missing
        return hidden

    # no SELECT on pgml.projects: PostgreSQL's refusal to read it, whatever the project
    answers = hidden_then_missing()
    predict = answers["predict"]
    assert predict.result_type == TEXT_OID
    assert predict.error["SQLSTATE"] == b"42501"
    assert predict.error["MESSAGE_PRIMARY"] == b"permission denied for table projects"
    # SELECT granted, the row hidden by the policy: the project does not exist
    grants(f"GRANT SELECT ON pgml.projects, pgml.models TO {roles.alice}")
    answers = hidden_then_missing()
    for name in ("predict", "deploy"):
        error = answers[name].error
        assert answers[name].result_type == TEXT_OID
        assert error["SQLSTATE"] == b"42704", error
        assert error["MESSAGE_PRIMARY"] == f'project "{project}" does not exist'.encode()
    # A model of a hidden project is a model that does not exist, and no error names its
    # project or owner.
    _, second = models(direct, project)
    never = second + 10**9
    hidden = fail_with_psycopg(alice, f"SELECT * FROM pgml.deploy({second})")
    missing = fail_with_psycopg(alice, f"SELECT * FROM pgml.deploy({never})")
    assert (hidden.sqlstate, hidden.message) == ("42704", f"model {second} does not exist")
    assert replace(missing, message=missing.message.replace(str(never), str(second))) == hidden
    # Tuning under a name a hidden project holds is refused, naming no owner.
    grants(f"GRANT INSERT ON pgml.projects, pgml.models, pgml.deployments TO {roles.alice}")
    failure = refused(fail_with_psycopg, alice, tune_sql(project, reviews), direct)
    assert failure.message == f'permission denied for project "{project}"'
    assert roles.team not in failure.detail + failure.hint
    # A member of the owner sees it: the label's type, and a prediction.
    grants(f"GRANT {roles.team} TO {roles.alice}")
    assert prepared(alice, calls["predict"]) == Answers(FLOAT4_OID, None)


def test_sql_straight_to_the_catalog_meets_the_owner_rule(
    tuner: ProxyProcess,
    direct: psycopg.Connection[Any],
    project: str,
    reviews: str,
    roles: Roles,
    grants: Callable[[str], None],
) -> None:
    """bob, with the README's team grants and a project of his own, writes SQL to the catalog
    through the proxy (relayed as it came): PostgreSQL refuses rows in the team's project,
    and the proxy goes on serving the team's model."""
    grants(f"GRANT INSERT ON pgml.projects, pgml.models, pgml.deployments TO {roles.bob}")
    bob = tuner.dsn(roles.bob)
    own = unique("bobs")
    ok(bob, tune_sql(own, reviews))
    (bobs_model,) = models(direct, own)
    first, second = models(direct, project)
    team_project = direct.execute("SELECT id FROM pgml.projects WHERE name = %s", [project])
    team_id = team_project.fetchone()[0]  # type: ignore[index]
    served = ok(bob, PREDICT.format(project=lit(project)))
    statements = {
        "deployments": "INSERT INTO pgml.deployments (id, project_id, model_id, strategy) "
        f"VALUES (424242, {team_id}, {{model}}, 'x')",
        "models": "INSERT INTO pgml.models (id, project_id, algorithm, status) "
        f"VALUES (424242, {team_id}, 'x', 'successful')",
    }
    for table, sql in statements.items():
        for model in (bobs_model, second):
            failure = refused(fail_with_psycopg, bob, sql.format(model=model), direct)
            assert failure.message == (
                f'new row violates row-level security policy for table "{table}"'
            )
    assert deployed(direct, project) == first
    assert ok(bob, PREDICT.format(project=lit(project))) == served
    # A member of the owner may; still not with a model of another project.
    grants(f"GRANT {roles.team} TO {roles.bob}")
    refused(fail_with_psycopg, bob, statements["deployments"].format(model=bobs_model), direct)
    ok(bob, statements["deployments"].format(model=second) + " RETURNING id")
    try:
        assert deployed(direct, project) == second
    finally:
        direct.execute("DELETE FROM pgml.deployments WHERE id = 424242")
    assert deployed(direct, project) == first


# --- USAGE on schema pgml ---------------------------------------------------------------------

SCHEMA_DENIED = ("42501", "permission denied for schema pgml")


@pytest.fixture
def no_usage(cluster: PostgresCluster) -> Iterator[None]:
    """Schema pgml used only by those granted USAGE (the superuser keeps it)."""
    cluster.psql("REVOKE USAGE ON SCHEMA pgml FROM PUBLIC")
    yield
    cluster.psql("GRANT USAGE ON SCHEMA pgml TO PUBLIC")


def test_without_usage_on_schema_pgml_no_catalog_row_is_read(
    tuner: ProxyProcess,
    cluster: PostgresCluster,
    direct: psycopg.Connection[Any],
    project: str,
    reviews: str,
    roles: Roles,
    grants: Callable[[str], None],
    no_usage: None,
) -> None:
    """Every call that reads the catalog for a role without USAGE on schema pgml fails as
    the same read straight to PostgreSQL does, grants on the tables notwithstanding; the
    catalog is unchanged, and USAGE granted lets the same calls through."""
    straight = fail_with_psycopg(cluster.dsn(roles.alice), "SELECT * FROM pgml.projects")
    assert (straight.sqlstate, straight.message) == SCHEMA_DENIED
    grants(f"GRANT SELECT, INSERT ON pgml.projects, pgml.models, pgml.deployments TO {roles.alice}")
    grants(f"GRANT {roles.team} TO {roles.alice}")
    alice = tuner.dsn(roles.alice)
    name = lit(project)
    calls = [
        PREDICT.format(project=name),
        PREDICT.format(project="'no such project'"),
        f"SELECT pgml.predict({name}, t) FROM (VALUES ('a'), ('b')) AS v(t)",
        f"SELECT pgml.predict_proba({name}, ARRAY['a', 'b'])",
        f"SELECT pgml.generate({name}, 'x')",
        f"SELECT * FROM pgml.deploy({name}, 'most_recent')",
        f"SELECT * FROM pgml.deploy({models(direct, project)[0]})",
        "SELECT * FROM pgml.deploy('no such project', 'most_recent')",
        f"SELECT * FROM pgml.deploy({10**12})",
        tune_sql(project, reviews),
        tune_sql(unique("new"), reviews),
        f"SELECT * FROM pgml.train({name}, 'classification', {lit(reviews)}, 'label')",
        f"SELECT * FROM pgml.train({lit(unique('new'))}, 'regression', {lit(reviews)}, 'label')",
    ]
    for sql in calls:
        for client in CLIENTS.values():
            failure = refused(client, alice, sql, direct)
            assert (failure.sqlstate, failure.message) == SCHEMA_DENIED, (sql, failure)
    with psycopg.connect(alice, autocommit=True) as conn:  # Parse and Describe too
        made = conn.pgconn.prepare(b"probe", f"SELECT pgml.predict({name}, $1)".encode())
        assert made.error_field(pq.DiagnosticField.SQLSTATE) == b"42501"
    grants(f"GRANT USAGE ON SCHEMA pgml TO {roles.alice}")
    assert ok(alice, PREDICT.format(project=name))[0][0] in (0.0, 1.0)
