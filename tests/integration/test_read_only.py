"""A pgml statement that reads writes nothing: it runs in READ ONLY transactions, for
roles without TEMP, and with a hot standby as the upstream (a primary of the system's
PostgreSQL, 15 on Debian 12, and its streaming replica, built here).  Statements that
write get PostgreSQL's 25006 there."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import missing_tool
from tests.integration._pgml import MODEL, create_docs, start_proxy, unique
from tests.integration._stand_in import as_postgresql, stand_in
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess


def _system_postgresql() -> Path | None:
    """The system's PostgreSQL binaries (Debian's package: 15 on Debian 12), newest first."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_basebackup"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


SYSTEM_BIN = _system_postgresql()

READS = [
    "SELECT id, pgml.embed('{model}', body) FROM {docs} ORDER BY id",
    "SELECT id, pgml.embed('{model}', body) AS e FROM {docs} WHERE id < 5 LIMIT 3",
    "SELECT *, (pgml.embed('{model}', body))[1:2] FROM {docs} ORDER BY id",
    "SELECT pgml.embed('{model}', 'a constant')",
    "SELECT id FROM {docs} WHERE (pgml.embed('{model}', body))[1] > 0 ORDER BY id",
    "SELECT count(*) FROM {docs} WHERE (pgml.embed('{model}', body))[1] > 0",
    "SELECT ((pgml.embed('{model}', body))[1] > 0) AS up, count(*), max(id) FROM {docs} "
    "GROUP BY 1 ORDER BY 1",
    "SELECT id, cat FROM {docs} WHERE id < 30 ORDER BY (pgml.embed('{model}', body))[2], id "
    "LIMIT 7",
    "SELECT DISTINCT cat, (pgml.embed('{model}', cat))[1:2] FROM {docs} ORDER BY cat",
    "SELECT d.*, s.e FROM (SELECT id, pgml.embed('{model}', body) AS e FROM {docs} "
    "WHERE id % 7 = 0) AS s JOIN {docs} d USING (id) ORDER BY id",
    'SELECT id, (pgml.chunk(\'character\', body, \'{{"chunk_size": 20, "chunk_overlap": 0, '
    '"separator": " "}}\')).* FROM {docs} WHERE id < 4',
    "WITH d AS (SELECT body FROM {docs} WHERE id = 2) SELECT (SELECT length(body) FROM d), "
    "c.* FROM pgml.chunk('character', (SELECT body FROM d)) AS c",
]
"""Reads of every shape: per-row in the select list (streamed), a constant call, and calls
PostgreSQL must see (WHERE, an aggregate, grouping, ordering, DISTINCT, a subquery, a call
returning a set over columns), whose rows and results the proxy carries where it may not
create temporary tables; a constant call over the statement's WITH query."""

DEFAULT = "default_transaction_read_only"
"""Read only by the session's default (set at connection, as for a role or database)."""


@pytest.fixture(scope="module")
def primary() -> Iterator[PostgresCluster]:
    if SYSTEM_BIN is None:
        missing_tool("the system's PostgreSQL (pg_basebackup) is not installed")
    cluster = PostgresCluster(bin_dir=SYSTEM_BIN).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def docs(primary: PostgresCluster) -> str:
    name = unique("docs")
    create_docs(primary, name)
    return name


@pytest.fixture(scope="module")
def proxy(primary: PostgresCluster) -> Iterator[ProxyProcess]:
    process = start_proxy(primary, batch_size=16)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def standby(primary: PostgresCluster, docs: str) -> Iterator[PostgresCluster]:
    replica = primary.standby()
    _replayed(primary, replica)
    yield replica
    replica.stop()


@pytest.fixture(scope="module")
def standby_proxy(standby: PostgresCluster) -> Iterator[ProxyProcess]:
    process = start_proxy(standby, batch_size=16)
    yield process
    process.stop()


def _replayed(primary: PostgresCluster, replica: PostgresCluster) -> None:
    """Until the replica has replayed everything the primary has written so far."""
    lsn = primary.psql("SELECT pg_current_wal_insert_lsn()").strip()
    deadline = time.monotonic() + 30
    while replica.psql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'").strip() != "t":
        assert time.monotonic() < deadline, "the replica did not catch up"
        time.sleep(0.05)


def _answer(dsn: str, sql: str, setup: str = "", binary: bool = False) -> Any:
    options = {"options": "-c default_transaction_read_only=on"} if setup == DEFAULT else {}
    with psycopg.connect(dsn, **options) as conn:
        if setup and setup != DEFAULT:
            conn.execute(setup)
        try:
            cur = conn.execute(sql, binary=binary)
            return cur.statusmessage, [d.name for d in cur.description or []], cur.fetchall()
        except psycopg.Error as error:
            return error.sqlstate, str(error).splitlines()[0]


def _sql(shape: int, docs: str) -> str:
    return READS[shape].format(model=MODEL, docs=docs)


@pytest.mark.parametrize("shape", range(len(READS)))
@pytest.mark.parametrize("how", ["BEGIN READ ONLY", DEFAULT])
def test_reads_in_a_read_only_transaction(
    proxy: ProxyProcess, docs: str, shape: int, how: str
) -> None:
    sql = _sql(shape, docs)
    for binary in (False, True):
        got = _answer(proxy.dsn(), sql, how, binary)
        assert got[0].startswith("SELECT"), got
        assert got == _answer(proxy.dsn(), sql, binary=binary)


@pytest.mark.parametrize("shape", range(len(READS)))
def test_reads_for_a_role_without_temp(
    proxy: ProxyProcess, primary: PostgresCluster, docs: str, shape: int
) -> None:
    role = unique("no_temp")
    primary.psql(
        f"REVOKE TEMP ON DATABASE postgres FROM PUBLIC; CREATE ROLE {role} LOGIN; "
        f"GRANT SELECT ON {docs} TO {role}; GRANT USAGE ON SCHEMA pgml TO {role}"
    )
    try:
        sql = _sql(shape, docs)
        got = _answer(proxy.dsn(user=role), sql)
        assert got[0].startswith("SELECT"), got
        assert got == _answer(proxy.dsn(), sql)
    finally:
        primary.psql(
            f"GRANT TEMP ON DATABASE postgres TO PUBLIC; DROP OWNED BY {role}; DROP ROLE {role}"
        )


@pytest.mark.parametrize("shape", range(len(READS)))
def test_reads_on_a_hot_standby(
    proxy: ProxyProcess, standby_proxy: ProxyProcess, docs: str, shape: int
) -> None:
    sql = _sql(shape, docs)
    got = _answer(standby_proxy.dsn(), sql)
    assert got[0].startswith("SELECT"), got
    assert got == _answer(proxy.dsn(), sql)


def test_the_standby_serves_what_the_primary_deploys(
    proxy: ProxyProcess,
    standby_proxy: ProxyProcess,
    primary: PostgresCluster,
    standby: PostgresCluster,
) -> None:
    project = unique("replicated")
    features = "ARRAY[5.1, 3.5, 1.4, 0.2]::real[]"
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pgml.load_dataset('iris')")
        conn.execute(
            "SELECT * FROM pgml.train(%s, 'classification', 'pgml.iris', 'target', 'linear')",
            [project],
        ).fetchall()
        _replayed(primary, standby)
        with psycopg.connect(standby_proxy.dsn(), autocommit=True) as replica:
            predict = f"SELECT pgml.predict('{project}', {features})"
            assert replica.execute(predict).fetchall() == conn.execute(predict).fetchall()
            first = replica.execute(
                "SELECT id FROM pgml.deployed_models WHERE name = %s", [project]
            ).fetchall()
            conn.execute(
                "SELECT * FROM pgml.train(%s, algorithm => 'random_forest', "
                "hyperparams => '{\"random_state\": 0}')",
                [project],
            ).fetchall()
            conn.execute("SELECT * FROM pgml.deploy(%s, 'most_recent')", [project]).fetchall()
            _replayed(primary, standby)
            deployed = time.monotonic()
            while (
                replica.execute(
                    "SELECT id FROM pgml.deployed_models WHERE name = %s", [project]
                ).fetchall()
                == first
            ):
                assert time.monotonic() - deployed < 5
                time.sleep(0.05)
            # the standby's proxy serves the new deployment within a second
            algorithm = "SELECT pgml.predict_proba(%s, " + features + ")"
            expected = conn.execute(algorithm, [project]).fetchall()
            while replica.execute(algorithm, [project]).fetchall() != expected:
                assert time.monotonic() - deployed < 1.5
                time.sleep(0.05)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pgml.load_dataset('iris')",
        "SELECT * FROM pgml.deploy('{project}', 'most_recent')",
        "SELECT * FROM pgml.train('{project}', algorithm => 'ridge')",
        "SELECT * FROM pgml.train('new_project', 'classification', 'pgml.iris', 'target')",
    ],
)
def test_writes_on_a_hot_standby_get_postgresqls_error(
    proxy: ProxyProcess,
    standby_proxy: ProxyProcess,
    primary: PostgresCluster,
    standby: PostgresCluster,
    sql: str,
) -> None:
    project = unique("written")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pgml.load_dataset('iris')")
        conn.execute(
            "SELECT * FROM pgml.train(%s, 'classification', 'pgml.iris', 'target')", [project]
        ).fetchall()
    _replayed(primary, standby)
    direct = _answer(standby.dsn(), "CREATE TABLE t (a int)")
    got = _answer(standby_proxy.dsn(), sql.format(project=project))
    assert got[0] == direct[0] == "25006", standby_proxy.log()[-3000:]


def test_a_long_read_on_a_hot_standby_is_held_there_and_cancelled(
    standby_proxy: ProxyProcess, standby: PostgresCluster
) -> None:
    """While a call works, the standby's backend waits for a lock the proxy holds on the
    standby (advisory locks are the standby's own): a ``pg_cancel_backend`` there stops
    the statement with PostgreSQL's error."""
    texts = "{" + ",".join(f'"sentence number {i} about replicas"' for i in range(8000)) + "}"
    with (
        psycopg.connect(standby_proxy.dsn(), autocommit=True) as conn,
        psycopg.connect(standby.dsn(), autocommit=True) as direct,
    ):
        pid = conn.info.backend_pid
        conn.execute(f"SELECT pgml.embed('{MODEL}', 'loaded')").fetchall()  # not the load
        blockers: list[str] = []

        def cancel() -> None:
            deadline = time.monotonic() + 60
            while not blockers and time.monotonic() < deadline:
                blockers.extend(
                    row[0]
                    for row in direct.execute(
                        "SELECT application_name FROM pg_stat_activity "
                        "WHERE pid = ANY (pg_blocking_pids(%s))",
                        [pid],
                    )
                )
                time.sleep(0.02)
            direct.execute("SELECT pg_cancel_backend(%s)", [pid])

        canceller = threading.Thread(target=cancel)
        canceller.start()
        began = time.monotonic()
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(f"SELECT pgml.embed('{MODEL}', '{texts}'::text[])").fetchall()
        canceller.join()
        assert caught.value.sqlstate == "57014"
        assert time.monotonic() - began < 5  # a batch of the texts at most, not all of them
        assert [b.split(" (")[0] for b in blockers] == ["pgml-proxy holds"]
        assert conn.execute("SELECT 1").fetchall() == [(1,)]


def test_a_carried_read_on_a_hot_standby_stops_at_its_statement_timeout(
    standby_proxy: ProxyProcess,
) -> None:
    """A call in WHERE on a standby (its rows carried through the proxy) over more rows
    than a second of work: PostgreSQL's own timeout error, within a batch or two."""
    with psycopg.connect(standby_proxy.dsn(), autocommit=True) as conn:
        conn.execute(f"SELECT pgml.embed('{MODEL}', 'loaded')").fetchall()  # not the load
        conn.execute("SET statement_timeout = '1s'")
        began = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            conn.execute(
                "SELECT count(*) FROM generate_series(1, 20000) AS g "
                f"WHERE (pgml.embed('{MODEL}', 'sentence ' || g))[1] > 0"
            ).fetchall()
        assert time.monotonic() - began < 5
        conn.execute("RESET statement_timeout")
        assert conn.execute("SELECT 1").fetchall() == [(1,)]


def test_a_cursor_over_calls_in_a_read_only_transaction(proxy: ProxyProcess, docs: str) -> None:
    """``DECLARE ... CURSOR`` and a client's named cursor (a portal read in pieces) over
    per-row calls read the same rows as without READ ONLY."""
    sql = f"SELECT id, (pgml.embed('{MODEL}', body))[1:2] FROM {docs} WHERE id < 9 ORDER BY id"
    answers = []
    for begin in ("BEGIN READ ONLY", "BEGIN"):
        with psycopg.connect(proxy.dsn()) as conn:
            conn.execute(begin)
            conn.execute(f"DECLARE c CURSOR FOR {sql}")
            declared = (
                conn.execute("FETCH 3 FROM c").fetchall()
                + conn.execute("FETCH ALL FROM c").fetchall()
            )
            with conn.cursor(name="named") as named:
                named.execute(sql)
                pieces = named.fetchmany(2) + named.fetchall()
            answers.append((declared, pieces))
    assert len(answers[0][0]) == 8
    assert answers[0] == answers[1]


WRITES = [
    "UPDATE {docs} SET emb = {f}('{model}', body) WHERE id < 3",
    "DELETE FROM {docs} WHERE ({f}('{model}', body))[1] > 100",
    "INSERT INTO {docs} (id, body, emb) SELECT id + 1000, body, {f}('{model}', body) "
    "FROM {docs} WHERE id < 3",
    "CREATE TABLE {docs}_made AS SELECT id, {f}('{model}', body) FROM {docs}",
    "SELECT id, {f}('{model}', body) INTO {docs}_made FROM {docs}",
    "WITH w AS (UPDATE {docs} SET cat = cat WHERE id = 1 RETURNING id) "
    "SELECT count(e) FROM (SELECT {f}('{model}', body) AS e FROM {docs}) AS s",
]


@pytest.mark.parametrize("shape", WRITES)
def test_writes_in_a_read_only_transaction_get_postgresqls_error(
    proxy: ProxyProcess, primary: PostgresCluster, docs: str, shape: str
) -> None:
    """PostgreSQL's SQLSTATE and message, naming the statement's own command, as for a
    VOLATILE stand-in (before any model runs: the model named does not exist)."""

    def answer(dsn: str, function: str) -> Any:
        sql = shape.format(docs=docs, f=function, model="no-such/model")
        return _answer(dsn, sql, "BEGIN READ ONLY")

    body = "SELECT ARRAY[length($2)::real]"
    with stand_in(primary, "embed", "text, text", "real[]", body) as function:
        sqlstate, _ = as_postgresql(answer, (primary.dsn(), function), (proxy.dsn(), "pgml.embed"))
    assert sqlstate == "25006"


def test_what_one_role_carries_is_bounded_and_given_back(primary: PostgresCluster) -> None:
    """Rows carried through the proxy count against the role's ``--max-carried-mb``: more
    is 54000 naming the flag; what a statement carried is given back when it ends."""
    process = ProxyProcess(
        "--upstream", primary.dsn(), "--max-carried-mb", "1", env={"HF_HUB_OFFLINE": "1"}
    ).start()
    sql = (
        "SELECT id, length(pad) FROM (SELECT id, repeat('x', 4000) AS pad FROM "
        "generate_series(1, {n}) AS id) AS s WHERE (pgml.embed('{model}', 'a' || id % 2))[1] "
        "IS NOT NULL"
    )
    try:
        with psycopg.connect(process.dsn()) as conn:
            conn.read_only = True
            with pytest.raises(psycopg.errors.ProgramLimitExceeded) as refused:
                conn.execute(sql.format(n=400, model=MODEL))  # 1.6 MB
            assert "--max-carried-mb" in (refused.value.diag.message_hint or "")
            conn.rollback()
            rows = conn.execute(sql.format(n=200, model=MODEL)).fetchall()  # 0.8 MB
            assert len(rows) == 200
    finally:
        process.stop()
