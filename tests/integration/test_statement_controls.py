"""PostgreSQL's controls reach a pgml statement while its model works: statement_timeout,
pg_cancel_backend, pg_terminate_backend and a client's cancel stop it with PostgreSQL's
own errors; pg_stat_activity shows it active; idle_in_transaction_session_timeout does
not fire in the middle of it.  Each is compared with the same control over a statement
that PostgreSQL runs itself (pg_sleep)."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration._pgml import unique
from tests.integration._transform import model_proxy
from tests.integration.test_capacity import FOREVER, LONG, UNBOUNDED, transform
from tests.integration.test_capacity import models as models  # the fixture
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

ENDLESS = transform(LONG, FOREVER)
SLEEP = "SELECT pg_sleep(600)"
"""PostgreSQL's own long statement: what each control does to it is the reference."""


@pytest.fixture(scope="module")
def proxy(cluster: PostgresCluster, models: Path) -> Iterator[ProxyProcess]:
    process = model_proxy(cluster, models, "--max-new-tokens", str(UNBOUNDED))
    with psycopg.connect(process.dsn(), autocommit=True) as conn:  # the model loaded once
        conn.execute(transform(LONG, '{"max_new_tokens": 1, "do_sample": false}')).fetchall()
    yield process
    process.stop()


@pytest.fixture
def rows(cluster: PostgresCluster) -> Iterator[str]:
    name = unique("controls")
    cluster.psql(
        f"CREATE TABLE {name} (id int PRIMARY KEY, body text); INSERT INTO {name} VALUES (1, 'a')"
    )
    yield name
    cluster.psql(f"DROP TABLE IF EXISTS {name}")


def endless(argument: str) -> str:
    """A call over ``argument`` (the text of an expression) that works until stopped."""
    task = f'{{"task": "text-generation", "model": "{LONG}"}}'
    return f"pgml.transform('{task}'::jsonb, '{FOREVER}', ARRAY[{argument}])"


def per_row(table: str) -> str:
    return f"SELECT id, {endless('body')} FROM {table}"


def _failure(conn: psycopg.Connection[Any], sql: str) -> tuple[psycopg.Error, float]:
    began = time.monotonic()
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(sql).fetchall()
    return caught.value, time.monotonic() - began


def _backend_pid(conn: psycopg.Connection[Any]) -> int:
    return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]


def _when_active(direct: psycopg.Connection[Any], pid: int, since: float) -> None:
    """Until the backend runs a statement that began after ``since`` (epoch seconds)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        row = direct.execute(
            "SELECT state FROM pg_stat_activity WHERE pid = %s AND query_start > to_timestamp(%s)",
            [pid, since],
        ).fetchone()
        if row is not None and row[0] == "active":
            return
        time.sleep(0.05)
    raise AssertionError("the statement never showed as active")


def in_where(table: str) -> str:
    """A call PostgreSQL must see the value of: the scope is materialised (a temporary
    table), or carried through the proxy where the session may not write."""
    return f"SELECT id FROM {table} WHERE {endless('body')} IS NOT NULL"


def upsert(table: str) -> str:
    """A call over the row an INSERT proposes, for the row it conflicts with."""
    return (
        f"INSERT INTO {table} (id, body) VALUES (1, 'b') ON CONFLICT (id) DO UPDATE "
        f"SET body = {endless('excluded.body')}::text"
    )


def in_having(table: str) -> str:
    """A call over each group's values, filtering the groups."""
    having = endless("min(body)")
    return f"SELECT id % 2 AS k, count(*) FROM {table} GROUP BY k HAVING {having} IS NOT NULL"


def merge(table: str) -> str:
    """A call in MERGE's action over the source's row."""
    return (
        f"MERGE INTO {table} d USING (SELECT 1 AS id, 'b' AS body) s ON d.id = s.id "
        f"WHEN MATCHED THEN UPDATE SET body = {endless('s.body')}::text"
    )


def over_items(table: str) -> str:
    """A call in FROM over the columns of the FROM item before it."""
    return f"SELECT t.id, x.* FROM {table} t, {endless('t.body')} x"


SHAPES = {
    "constant": (lambda _: ENDLESS, ""),
    "per-row": (per_row, ""),
    "where": (in_where, ""),
    "where, read only": (in_where, "SET default_transaction_read_only = on"),
    "upsert": (upsert, ""),
    "having": (in_having, ""),
    "merge": (merge, ""),
    "from, over the items before": (over_items, ""),
    "from, over the items before, read only": (
        over_items,
        "SET default_transaction_read_only = on",
    ),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("control", ["statement_timeout", "pg_cancel_backend", "cancel"])
def test_a_control_stops_the_model_with_postgresqls_error(
    proxy: ProxyProcess, cluster: PostgresCluster, rows: str, shape: str, control: str
) -> None:
    """Whichever way the proxy evaluates the call (once, a row at a time as rows stream,
    over a temporary table, or over rows carried through the proxy in a read-only
    session), a control stops it as it stops PostgreSQL's own long statement."""
    statement_of, setup = SHAPES[shape]
    answers = []
    for dsn, statement in ((cluster.dsn(), SLEEP), (proxy.dsn(), statement_of(rows))):
        with (
            psycopg.connect(dsn, autocommit=True) as conn,
            psycopg.connect(cluster.dsn(), autocommit=True) as direct,
        ):
            if setup:
                conn.execute(setup)
            pid = _backend_pid(conn)
            if control == "statement_timeout":
                conn.execute("SET statement_timeout = '1s'")
            else:
                since = time.time()
                stop = threading.Timer(
                    0, lambda c=conn, p=pid, s=since, d=direct: _stop(control, c, d, p, s)
                )
                stop.start()
            error, took = _failure(conn, statement)
            answers.append((error.sqlstate, str(error)))
            assert took < 30
            # the session goes on, with nothing left of the statement
            assert conn.execute("SELECT 1").fetchall() == [(1,)]
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert direct.execute(f"SELECT * FROM {rows}").fetchall() == [(1, "a")]  # as it was
    assert answers[1] == answers[0]


def _stop(
    control: str,
    conn: psycopg.Connection[Any],
    direct: psycopg.Connection[Any],
    pid: int,
    since: float,
) -> None:
    _when_active(direct, pid, since)
    time.sleep(1.0)  # the model (or pg_sleep) is under way, even on a busy machine
    if control == "pg_cancel_backend":
        direct.execute("SELECT pg_cancel_backend(%s)", [pid])
    else:
        conn.cancel_safe()


@pytest.mark.parametrize("shape", ["constant", "per-row"])
def test_pg_terminate_backend_ends_the_session(
    proxy: ProxyProcess, cluster: PostgresCluster, rows: str, shape: str
) -> None:
    sql = ENDLESS if shape == "constant" else per_row(rows)
    answers = []
    for dsn, statement in ((cluster.dsn(), SLEEP), (proxy.dsn(), sql)):
        with (
            psycopg.connect(dsn, autocommit=True) as conn,
            psycopg.connect(cluster.dsn(), autocommit=True) as direct,
        ):
            pid, since = _backend_pid(conn), time.time()

            def terminate(p: int = pid, s: float = since, d: Any = direct) -> None:
                _when_active(d, p, s)
                d.execute("SELECT pg_terminate_backend(%s)", [p])

            threading.Thread(target=terminate).start()
            error, took = _failure(conn, statement)
            answers.append((error.sqlstate, str(error).splitlines()[0]))
            assert took < 30 and conn.closed
    assert (
        answers[1]
        == answers[0]
        == (
            "57P01",
            "terminating connection due to administrator command",
        )
    )


def test_idle_in_transaction_timeout_waits_for_the_statement(
    proxy: ProxyProcess, cluster: PostgresCluster
) -> None:
    """A statement that runs longer than the session's idle-in-transaction limit, inside
    a transaction, finishes (the backend is not idle while the model works)."""
    steps = '{"min_new_tokens": 3000, "max_new_tokens": 3000, "do_sample": false}'
    with psycopg.connect(proxy.dsn()) as conn:
        conn.execute("SET idle_in_transaction_session_timeout = '300ms'")
        began = time.monotonic()
        assert len(conn.execute(transform(LONG, steps)).fetchall()) == 1
        assert time.monotonic() - began > 0.6  # twice the limit: it would have fired
        assert conn.execute("SELECT 1").fetchall() == [(1,)]
        conn.commit()


def _holder(direct: psycopg.Connection[Any], pid: int) -> tuple[str, str] | None:
    """What lock the backend ``pid`` waits for, and the application that holds it.

    ``pg_stat_activity`` is a snapshot taken once per statement while
    ``pg_blocking_pids`` is read live, so a row counts only where the snapshot
    already shows the backend waiting for a lock."""
    row = direct.execute(
        "SELECT w.wait_event, h.application_name FROM pg_stat_activity AS w "
        "JOIN pg_stat_activity AS h ON h.pid = ANY (pg_blocking_pids(w.pid)) "
        "WHERE w.pid = %s AND w.wait_event_type = 'Lock'",
        [pid],
    ).fetchone()
    return None if row is None else (row[0], row[1])


def _until_held(direct: psycopg.Connection[Any], pid: int) -> tuple[str, str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = _holder(direct, pid)
        if found is not None:
            return found
        time.sleep(0.05)
    raise AssertionError("the backend never waited for the proxy")


def test_a_cancel_reaches_the_statement_however_late_the_proxy_is(
    proxy: ProxyProcess, cluster: PostgresCluster
) -> None:
    """The backend waits for a lock the proxy holds, not in sleeps the proxy must keep
    sending: with the proxy stopped (SIGSTOP) for longer than any such sleep, a
    ``pg_cancel_backend`` still finds the statement and stops it."""
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as conn,
        psycopg.connect(cluster.dsn(), autocommit=True) as direct,
    ):
        pid = _backend_pid(conn)
        held: list[tuple[str, str]] = []
        gave_up = threading.Event()

        def stop() -> None:
            try:
                held.append(_until_held(direct, pid))
                proxy.signal(signal.SIGSTOP)
                try:
                    time.sleep(1.5)
                    direct.execute("SELECT pg_cancel_backend(%s)", [pid])
                    time.sleep(0.5)
                finally:
                    proxy.signal(signal.SIGCONT)
            finally:
                if not gave_up.wait(20):  # the cancel was lost: end the statement anyway
                    gave_up.set()
                    conn.cancel_safe()

        stopper = threading.Thread(target=stop)
        stopper.start()
        error, _ = _failure(conn, ENDLESS)
        finished = not gave_up.is_set()
        gave_up.set()
        stopper.join()
        assert held, "the backend never waited for the proxy"
        assert finished, "the cancel was lost"
        assert (error.sqlstate, str(error)) == ("57014", "canceling statement due to user request")
        assert held[0][0] == "advisory" and held[0][1].startswith("pgml-proxy holds (")
        assert conn.execute("SELECT 1").fetchall() == [(1,)]


def test_the_sessions_lock_timeout_neither_stops_the_call_nor_changes(
    proxy: ProxyProcess,
) -> None:
    """The backend waits for the proxy whatever the session's ``lock_timeout``, which is
    the same afterwards: in autocommit, in a transaction, and where SET LOCAL set it."""
    steps = transform(LONG, '{"min_new_tokens": 2000, "max_new_tokens": 2000, "do_sample": false}')
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10ms'")
        assert len(conn.execute(steps).fetchall()) == 1
        assert conn.execute("SHOW lock_timeout").fetchall() == [("10ms",)]
        conn.execute("BEGIN")
        assert len(conn.execute(steps).fetchall()) == 1
        assert conn.execute("SHOW lock_timeout").fetchall() == [("10ms",)]
        conn.execute("SET LOCAL lock_timeout = '20ms'")
        assert len(conn.execute(steps).fetchall()) == 1
        assert conn.execute("SHOW lock_timeout").fetchall() == [("20ms",)]
        conn.execute("COMMIT")
        assert conn.execute("SHOW lock_timeout").fetchall() == [("10ms",)]


def test_a_call_outlasts_its_hold_connection(proxy: ProxyProcess, cluster: PostgresCluster) -> None:
    """A DBA ends the proxy's hold connection while a call works: PostgreSQL lets the
    backend go, the proxy holds it again on a new connection, and the call ends well."""
    steps = transform(LONG, '{"min_new_tokens": 6000, "max_new_tokens": 6000, "do_sample": false}')
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as conn,
        psycopg.connect(cluster.dsn(), autocommit=True) as direct,
    ):
        pid = _backend_pid(conn)
        holders: list[int] = []

        def terminate() -> None:
            _until_held(direct, pid)
            first = direct.execute(
                "SELECT pid FROM pg_stat_activity WHERE pid = ANY (pg_blocking_pids(%s))", [pid]
            ).fetchone()
            assert first is not None
            holders.append(first[0])
            direct.execute("SELECT pg_terminate_backend(%s)", [first[0]])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                again = direct.execute(
                    "SELECT pid FROM pg_stat_activity WHERE pid = ANY (pg_blocking_pids(%s))",
                    [pid],
                ).fetchone()
                if again is not None and again[0] != first[0]:
                    holders.append(again[0])
                    return
                time.sleep(0.05)

        terminator = threading.Thread(target=terminate)
        terminator.start()
        assert len(conn.execute(steps).fetchall()) == 1
        terminator.join()
        assert len(holders) == 2, "the backend was not held again"


@pytest.fixture
def silent_hub() -> Iterator[str]:
    """A hub address that accepts connections and never answers: a download that hangs."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for connection in accepted:
        connection.close()


@pytest.mark.parametrize("control", ["statement_timeout", "cancel"])
def test_a_control_stops_a_model_download(
    cluster: PostgresCluster, silent_hub: str, control: str
) -> None:
    """A model not found locally is downloaded from the hub, which can take minutes: the
    statement stops within a second all the same (the download goes on, for the next
    call); here the hub never answers."""
    hub = {"HF_ENDPOINT": silent_hub, "HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "120"}
    process = ProxyProcess("--upstream", cluster.dsn(), env=hub).start()
    try:
        with psycopg.connect(process.dsn(), autocommit=True) as conn:
            sql = "SELECT pgml.embed('slow-org/never-answers', 'x')"
            if control == "statement_timeout":
                conn.execute("SET statement_timeout = '1s'")
            else:
                threading.Timer(1.0, conn.cancel).start()
            error, took = _failure(conn, sql)
            assert isinstance(error, psycopg.errors.QueryCanceled), error
            reason = "statement timeout" if control == "statement_timeout" else "user request"
            assert str(error).strip() == f"canceling statement due to {reason}"
            assert took < 3.0, took
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        process.stop()


class SlowNewConnections:
    """A TCP forwarder to the cluster that, while ``slow`` is set, connects each new
    connection to the server only after ``delay`` seconds: a cancel request on its way."""

    def __init__(self, target: int, delay: float) -> None:
        self.target = target
        self.delay = delay
        self.slow = threading.Event()
        self.port = 0
        self._ready = threading.Event()
        self._loop: Any = None
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    def _run(self) -> None:
        import asyncio

        async def pipe(reader: Any, writer: Any) -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        async def accepted(reader: Any, writer: Any) -> None:
            if self.slow.is_set():
                await asyncio.sleep(self.delay)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        async def main() -> None:
            server = await asyncio.start_server(accepted, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            await asyncio.Event().wait()

        asyncio.run(main())


def test_a_cancel_on_its_way_does_not_stop_the_next_statement(
    cluster: PostgresCluster, models: Path
) -> None:
    """The proxy stops a pgml statement at once on a client's cancel and forwards the
    cancel to the server, which takes time on a busy machine; the client's next statement
    waits until the server has taken it (as after libpq's own cancel), so the cancel on
    its way stops nothing else."""
    forwarder = SlowNewConnections(cluster.port, delay=1.5)
    upstream = f"postgresql://postgres@127.0.0.1:{forwarder.port}/postgres"
    process = model_proxy(
        cluster, models, "--max-new-tokens", str(UNBOUNDED), "--upstream", upstream
    )
    try:
        with psycopg.connect(process.dsn(), autocommit=True) as conn:
            conn.execute(transform(LONG, '{"max_new_tokens": 1, "do_sample": false}')).fetchall()

            def cancel() -> None:
                forwarder.slow.set()
                conn.cancel_safe()

            timer = threading.Timer(1.0, cancel)
            timer.start()
            error, _ = _failure(conn, ENDLESS)
            timer.join()
            assert error.sqlstate == "57014"
            began = time.monotonic()
            assert conn.execute("SELECT pg_sleep(2.5), 1").fetchone() == ("", 1)
            assert time.monotonic() - began < 10
    finally:
        forwarder.slow.clear()
        process.stop()
