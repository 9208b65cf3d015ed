"""Clients that vanish (socket closed or reset, no Terminate) take their backend with them.

PostgreSQL ends a backend whose client is gone; through the proxy the same must hold
whatever the session was doing: an extended-protocol batch without Sync, a COPY, a pgml
statement (the proxy's own work, per-row batches included), a transaction, a statement
the upstream is still running, results the client stopped reading.  Afterwards
``pg_stat_activity`` is back to its baseline within a second or two, nothing the
abandoned transactions wrote is left, and the proxy's memory is back near where it was.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from benchmarks.memory import rss_mb
from tests.support import rawclient as rc
from tests.support.fuzz import MODEL
from tests.support.fuzzrun import fuzz_backends, wait_for_backends
from tests.support.rawclient import RawClient
from tests.support.stack import Stack, private_stack

APPLICATION = "pgml-abandon"
CLIENTS = 200
GONE_WITHIN = 2.0
ROWS = 400
"""Rows of the docs table: a per-row pgml call over all of them runs for seconds."""
TX_TABLE = "abandoned_tx"
COPY_TABLE = "abandoned_copy"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with private_stack("--batch-size", "4", rows=ROWS) as running:
        running.cluster.psql(
            f"CREATE TABLE {TX_TABLE} (client int, at timestamptz DEFAULT now());"
            f"CREATE TABLE {COPY_TABLE} (a int, b text)"
        )
        yield running


def login(port: int) -> tuple[RawClient, int]:
    client = RawClient.connect("127.0.0.1", port, timeout=20.0)
    messages = client.startup("postgres", application_name=APPLICATION)
    assert messages[-1].type == b"Z", messages
    pid, _ = rc.backend_key(next(m for m in messages if m.type == b"K").body)
    return client, pid


def vanish(client: RawClient, reset: bool) -> None:
    """Leave without Terminate: FIN, or RST when ``reset``."""
    if reset:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def backends(stack: Stack) -> list[str]:
    return fuzz_backends(stack.cluster, APPLICATION)


def gone(stack: Stack) -> list[str]:
    """The abandoned backends still there after ``GONE_WITHIN`` seconds (none, we hope)."""
    return wait_for_backends(stack.cluster, GONE_WITHIN, APPLICATION)


def active(stack: Stack, pid: int, marker: str = "") -> bool:
    out = stack.cluster.psql(
        f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state = 'active'"
        f" AND query LIKE '%{marker}%'"
    )
    return out == "1\n"


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


# --- what each abandoning client starts -------------------------------------------------


def start_extended_batch(client: RawClient, i: int, table: str) -> None:
    client.send(
        rc.parse("", "SELECT g, md5(g::text) FROM generate_series(1, $1::int) g"),
        rc.bind("", "", [b"1000"]),
        rc.execute(),
    )


def start_pgml_batch(client: RawClient, i: int, table: str) -> None:
    client.send(
        rc.parse("", f"SELECT id, pgml.embed($1, body) FROM {table} WHERE id <= $2::int"),
        rc.bind("", "", [MODEL.encode(), b"12"]),
        rc.execute(),
    )


def start_copy(client: RawClient, i: int, table: str) -> None:
    client.send(rc.query(f"COPY {COPY_TABLE} FROM STDIN"))
    client.read_until([b"G"])
    client.send(rc.copy_data(b"".join(b"%d\tpart of an abandoned copy\n" % n for n in range(50))))


def start_pgml_per_row(client: RawClient, i: int, table: str) -> None:
    client.send(rc.query(f"SELECT id, pgml.embed('{MODEL}', body) FROM {table} WHERE id <= 20"))


def start_transaction(client: RawClient, i: int, table: str) -> None:
    client.send(rc.query("BEGIN"), rc.query(f"INSERT INTO {TX_TABLE} (client) VALUES ({i})"))
    client.read_until_ready(2)


STARTS = (start_extended_batch, start_pgml_batch, start_copy, start_pgml_per_row, start_transaction)


def abandon(stack: Stack, i: int) -> None:
    client, _ = login(stack.proxy.port)
    STARTS[i % len(STARTS)](client, i, stack.table)
    vanish(client, reset=bool(i // len(STARTS) % 2))


def complete(stack: Stack, i: int) -> None:
    """The same work as :func:`abandon`, finished properly (for the warm-up)."""
    with psycopg.connect(
        stack.proxy.dsn(application_name=APPLICATION), autocommit=True, connect_timeout=10
    ) as conn:
        conn.execute(f"SELECT id, pgml.embed('{MODEL}', body) FROM {stack.table} WHERE id <= 20")
        conn.execute("SELECT g, md5(g::text) FROM generate_series(1, %s) g", (1000,))
        with conn.cursor().copy(f"COPY {COPY_TABLE} FROM STDIN") as copy:
            copy.write(b"".join(b"%d\twarm-up\n" % n for n in range(50)))
        with conn.transaction(force_rollback=True):
            conn.execute(f"INSERT INTO {TX_TABLE} (client) VALUES (-1)")


def test_200_abandoned_sessions(stack: Stack) -> None:
    assert not backends(stack)
    with ThreadPoolExecutor(20) as pool:
        list(pool.map(lambda i: complete(stack, i), range(40)))
    stack.cluster.psql(f"TRUNCATE {COPY_TABLE}")
    assert wait_until(lambda: not backends(stack), 5), backends(stack)
    assert stack.proxy.process is not None
    pid = stack.proxy.process.pid
    time.sleep(1.0)
    before = rss_mb(pid)

    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            abandon(stack, i)
        except BaseException as exc:  # reported below, with the client's number
            errors.append(RuntimeError(f"client {i}: {exc!r}"))

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(run, range(CLIENTS)))
    assert not errors, errors[:5]
    problems = []
    left = gone(stack)
    if left:
        problems.append(
            f"{len(left)} of {CLIENTS} abandoned backends still open {GONE_WITHIN} s later "
            "(application_name pid state wait_event query):\n" + "\n".join(left[:40])
        )
    for table in (TX_TABLE, COPY_TABLE):
        rows = stack.cluster.psql(f"SELECT count(*) FROM {table}").strip()
        if rows != "0":
            problems.append(f"{rows} rows of abandoned work in {table}")
    if not stack.answers():
        problems.append("the proxy no longer answers a new client")
    if not wait_until(lambda: rss_mb(pid) <= before * 1.10, 5.0):
        problems.append(f"proxy RSS {rss_mb(pid):.1f} MB, {before:.1f} MB before the clients")
    if "Traceback" in stack.proxy.log():
        problems.append("tracebacks in the proxy's log")
    assert not problems, "\n".join(problems)


# --- one at a time, with the backend watched -----------------------------------------------

RESET = pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])


def assert_backend_ends(stack: Stack, pid: int) -> None:
    assert wait_until(
        lambda: (
            stack.cluster.psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}") == "0\n"
        ),
        GONE_WITHIN,
    ), f"backend {pid} outlived its client: {backends(stack)}"


@RESET
@pytest.mark.parametrize("read_only", [False, True], ids=["streamed", "carried"])
def test_gone_while_proxy_runs_pgml_statement(stack: Stack, reset: bool, read_only: bool) -> None:
    """A per-row call over all the rows (seconds of the proxy's own work): in the select
    list, or in WHERE over the rows carried through the proxy in a READ ONLY transaction."""
    client, pid = login(stack.proxy.port)
    sql = f"SELECT id, pgml.embed('{MODEL}', body) FROM {stack.table}"
    if read_only:
        client.send(rc.query("BEGIN READ ONLY"))
        client.read_until_ready(1)
        sql = f"SELECT id FROM {stack.table} WHERE (pgml.embed('{MODEL}', body))[1] > -100"
    client.send(rc.query(sql))
    time.sleep(0.5)
    vanish(client, reset)
    assert_backend_ends(stack, pid)
    assert stack.answers()


MERGE_TABLE = "abandoned_merge"
SHAPES = {
    "having": "SELECT id FROM {t} GROUP BY id HAVING (pgml.embed('{m}', min(body)))[1] > -100",
    "from": "SELECT d.id, e FROM {t} AS d, LATERAL pgml.embed('{m}', d.body) AS e",
    "merge": "MERGE INTO {w} AS w USING {t} AS d ON w.id = d.id "
    "WHEN MATCHED THEN UPDATE SET e = pgml.embed('{m}', d.body)",
    "update": "UPDATE {w} AS w SET e = pgml.embed('{m}', d.body) FROM {t} AS d WHERE d.id = w.id",
}


@RESET
@pytest.mark.parametrize("shape", list(SHAPES))
def test_gone_during_every_shape(stack: Stack, reset: bool, shape: str) -> None:
    """HAVING, a call in FROM over the items before it, MERGE's action and UPDATE's SET,
    each over every row: the backend ends with its client and nothing is written."""
    stack.cluster.psql(
        f"CREATE TABLE IF NOT EXISTS {MERGE_TABLE} (id int PRIMARY KEY, e real[]); "
        f"TRUNCATE {MERGE_TABLE}; INSERT INTO {MERGE_TABLE} SELECT id FROM {stack.table}"
    )
    client, pid = login(stack.proxy.port)
    client.send(rc.query(SHAPES[shape].format(t=stack.table, w=MERGE_TABLE, m=MODEL)))
    assert wait_until(lambda: active(stack, pid), 5.0), "the statement never started"
    time.sleep(0.5)
    assert active(stack, pid), "the statement ended before its client left"
    vanish(client, reset)
    assert_backend_ends(stack, pid)
    written = stack.cluster.psql(f"SELECT count(*) FROM {MERGE_TABLE} WHERE e IS NOT NULL")
    assert written == "0\n"
    assert stack.answers()


@RESET
@pytest.mark.parametrize("sync", [True, False], ids=["sync", "no-sync"])
def test_gone_during_extended_takeover(stack: Stack, reset: bool, sync: bool) -> None:
    """The proxy has taken an extended-protocol batch over (running it, or waiting for the
    rest of it)."""
    client, pid = login(stack.proxy.port)
    client.send(
        rc.parse("", f"SELECT id, pgml.embed($1, body) FROM {stack.table}"),
        rc.bind("", "", [MODEL.encode()]),
        rc.execute(),
        rc.sync() if sync else rc.flush(),
    )
    time.sleep(0.5)
    vanish(client, reset)
    assert_backend_ends(stack, pid)


@RESET
def test_gone_during_copy(stack: Stack, reset: bool) -> None:
    """COPY FROM STDIN half sent: the backend ends and the COPY leaves no row."""
    client, pid = login(stack.proxy.port)
    client.send(rc.query(f"COPY {COPY_TABLE} FROM STDIN"))
    client.read_until([b"G"])
    client.send(rc.copy_data(b"1\tfirst\n2\tsec"))
    time.sleep(0.2)
    vanish(client, reset)
    assert_backend_ends(stack, pid)
    assert stack.cluster.psql(f"SELECT count(*) FROM {COPY_TABLE}") == "0\n"


@RESET
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pg_sleep(30) /* waiting */",
        "SELECT pgml.version(), pg_sleep(30) /* waiting */",
        f"BEGIN; LOCK TABLE {TX_TABLE}; SELECT pg_sleep(30) /* waiting */",
    ],
    ids=["plain", "pgml", "holding-a-lock"],
)
def test_gone_while_upstream_works(stack: Stack, reset: bool, sql: str) -> None:
    """The upstream is busy with the statement: it is cancelled and the backend ends
    (and a lock it held is free again)."""
    client, pid = login(stack.proxy.port)
    client.send(rc.query(sql))
    assert wait_until(lambda: active(stack, pid, "pg_sleep"), 5.0)
    vanish(client, reset)
    assert_backend_ends(stack, pid)
    with psycopg.connect(stack.cluster.dsn(), autocommit=True) as direct:
        direct.execute("SET lock_timeout = '1s'")
        direct.execute(f"BEGIN; LOCK TABLE {TX_TABLE}; ROLLBACK")


@RESET
def test_gone_in_open_transaction(stack: Stack, reset: bool) -> None:
    client, pid = login(stack.proxy.port)
    client.send(rc.query(f"BEGIN; INSERT INTO {TX_TABLE} (client) VALUES (1)"))
    client.read_until_ready()
    vanish(client, reset)
    assert_backend_ends(stack, pid)
    assert stack.cluster.psql(f"SELECT count(*) FROM {TX_TABLE}") == "0\n"


@RESET
@pytest.mark.parametrize("pgml", [False, True], ids=["plain", "pgml"])
def test_gone_while_results_back_up(stack: Stack, reset: bool, pgml: bool) -> None:
    """The client stops reading a large result (the proxy pauses its upstream reads),
    then goes."""
    client, pid = login(stack.proxy.port)
    call = "pgml.version()" if pgml else "'x'"
    client.send(rc.query(f"SELECT {call}, g, repeat('x', 1000) FROM generate_series(1, 100000) g"))
    time.sleep(1.5)
    vanish(client, reset)
    assert_backend_ends(stack, pid)


def test_gone_mid_statement_leaves_others_alone(stack: Stack) -> None:
    """While abandoned statements are torn down, another client's work goes on."""
    results: list[object] = []

    def steady() -> None:
        with psycopg.connect(stack.proxy.dsn(), autocommit=True, connect_timeout=5) as conn:
            for _ in range(20):
                results.append(conn.execute("SELECT 1").fetchone())
                time.sleep(0.05)

    worker = threading.Thread(target=steady)
    worker.start()
    for reset in (False, True):
        client, pid = login(stack.proxy.port)
        client.send(rc.query(f"SELECT id, pgml.embed('{MODEL}', body) FROM {stack.table}"))
        time.sleep(0.2)
        vanish(client, reset)
        assert_backend_ends(stack, pid)
    worker.join(30)
    assert results == [(1,)] * 20
