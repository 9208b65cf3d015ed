"""The upstream goes away under a session: the client learns it at once, nobody hangs."""

from __future__ import annotations

import contextlib
import select
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.integration._wire import RawClient, TcpForwarder, error_fields, query, wait_for
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

UNEXPECTED = "upstream closed the connection unexpectedly"


@pytest.fixture
def own_proxy(cluster: PostgresCluster) -> Iterator[ProxyProcess]:
    process = ProxyProcess("--upstream", cluster.dsn()).start()
    yield process
    process.stop()


@pytest.fixture
def forwarder(cluster: PostgresCluster) -> Iterator[TcpForwarder]:
    relay = TcpForwarder("127.0.0.1", cluster.port).start()
    yield relay
    relay.stop()


@pytest.fixture
def forwarded_proxy(forwarder: TcpForwarder) -> Iterator[ProxyProcess]:
    """A proxy whose upstream traffic runs through ``forwarder``."""
    upstream = f"postgresql://postgres@127.0.0.1:{forwarder.port}/postgres"
    process = ProxyProcess("--upstream", upstream).start()
    yield process
    process.stop()


@pytest.fixture
def direct(cluster: PostgresCluster) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def active_query(direct: psycopg.Connection[tuple[object, ...]], pid: int) -> str | None:
    """The statement ``pid`` is running now, or ``None``."""
    row = direct.execute(
        "SELECT query FROM pg_stat_activity WHERE pid = %s AND state = 'active'", (pid,)
    ).fetchone()
    return None if row is None else str(row[0])


def backend_exists(direct: psycopg.Connection[tuple[object, ...]], pid: int) -> bool:
    row = direct.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
    return row.fetchone() == (1,)


def terminate(direct: psycopg.Connection[tuple[object, ...]], pid: int) -> None:
    direct.execute("SELECT pg_terminate_backend(%s)", (pid,))


def only_fatal(messages: list[tuple[str, bytes]]) -> dict[str, str]:
    """The single message read must be a FATAL ErrorResponse; return its fields."""
    assert [mtype for mtype, _ in messages] == ["E"], messages
    fields = error_fields(messages[0][1])
    assert fields["S"] == "FATAL", fields
    return fields


def assert_serves(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT 'alive'").fetchone() == ("alive",)


# --- pg_terminate_backend ------------------------------------------------------------


def test_terminated_backend_fatal_relayed_verbatim(
    own_proxy: ProxyProcess, direct: psycopg.Connection[tuple[object, ...]]
) -> None:
    """An idle session's backend is terminated: the server's own FATAL 57P01 comes through,
    alone, and the proxy adds nothing of its own."""
    with psycopg.connect(own_proxy.dsn(), autocommit=True) as bystander:
        client = RawClient(own_proxy.port)
        client.login()
        terminate(direct, client.backend_pid)
        fields = only_fatal(client.read_to_eof())
        assert fields["C"] == "57P01"
        assert "administrator command" in fields["M"]
        assert bystander.execute("SELECT 1").fetchone() == (1,)
    assert UNEXPECTED not in own_proxy.log()
    assert "Traceback" not in own_proxy.log()


def test_terminated_backend_psycopg_idle(
    own_proxy: ProxyProcess, direct: psycopg.Connection[tuple[object, ...]]
) -> None:
    """psycopg raises AdminShutdown on its next statement after an idle termination."""
    with (
        psycopg.connect(own_proxy.dsn(), autocommit=True) as victim,
        psycopg.connect(own_proxy.dsn(), autocommit=True) as bystander,
    ):
        pid = victim.info.backend_pid
        terminate(direct, pid)
        readable, _, _ = select.select([victim.fileno()], [], [], 5)
        assert readable, "the FATAL never reached the client"
        with pytest.raises(psycopg.OperationalError) as caught:
            victim.execute("SELECT 1")
        assert caught.value.sqlstate == "57P01", caught.value
        assert bystander.execute("SELECT 2").fetchone() == (2,)


def test_a_terminated_backend_s_fatal_reaches_a_client_that_pipelines(
    own_proxy: ProxyProcess, direct: psycopg.Connection[tuple[object, ...]]
) -> None:
    """The backend is terminated while the client's pipelined statements are still on
    their way to it: the proxy's next write finds the server gone, and the FATAL the
    server sent before it went, unread until then, still reaches the client, as it would
    from PostgreSQL itself (not the proxy's 08006)."""
    client = RawClient(own_proxy.port)
    client.login()
    pid = client.backend_pid
    client.send(query("SELECT pg_sleep(10)"))
    assert wait_for(lambda: active_query(direct, pid) is not None, timeout=3)
    client.sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:  # until every buffer on the way to the server is full
            client.sock.send(query("SELECT 1") * 4096)
    client.sock.settimeout(10)
    terminate(direct, pid)
    received = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := client.sock.recv(65536):
            received += chunk
    client.buffer[:] = received
    messages = client.read_to_eof()
    assert [mtype for mtype, _ in messages] == ["T", "E"], messages
    assert error_fields(messages[-1][1])["C"] == "57P01"
    client.close()
    assert_serves(own_proxy)


def test_terminated_backend_psycopg_mid_query(
    own_proxy: ProxyProcess,
    direct: psycopg.Connection[tuple[object, ...]],
    pool: ThreadPoolExecutor,
) -> None:
    """The backend is terminated while it runs pg_sleep: the statement fails with 57P01."""
    with (
        psycopg.connect(own_proxy.dsn(), autocommit=True) as victim,
        psycopg.connect(own_proxy.dsn(), autocommit=True) as bystander,
    ):
        pid = victim.info.backend_pid
        running = pool.submit(victim.execute, "SELECT pg_sleep(10)")
        assert wait_for(lambda: active_query(direct, pid) is not None, timeout=3)
        terminate(direct, pid)
        with pytest.raises(psycopg.errors.AdminShutdown) as caught:
            running.result(timeout=5)
        assert caught.value.sqlstate == "57P01"
        assert bystander.execute("SELECT 3").fetchone() == (3,)
    assert_serves(own_proxy)


# --- the upstream vanishes without a word ----------------------------------------------


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize("mid_query", [False, True], ids=["idle", "mid-query"])
def test_upstream_cut_raw(
    forwarded_proxy: ProxyProcess,
    forwarder: TcpForwarder,
    direct: psycopg.Connection[tuple[object, ...]],
    reset: bool,
    mid_query: bool,
) -> None:
    """The upstream socket dies with no FATAL: the proxy sends its own FATAL 08006 and
    closes; the proxy keeps serving new sessions."""
    client = RawClient(forwarded_proxy.port)
    client.login()
    try:
        if mid_query:
            client.send(query("SELECT pg_sleep(10)"))
            assert wait_for(lambda: active_query(direct, client.backend_pid) is not None, 3)
        assert forwarder.cut(reset=reset) == 1
        fields = only_fatal(client.read_to_eof())
        assert fields["C"] == "08006"
        assert fields["M"] == "server closed the connection unexpectedly"
    finally:
        terminate(direct, client.backend_pid)
    assert_serves(forwarded_proxy)
    log = forwarded_proxy.log()
    assert sum(UNEXPECTED in line for line in log.splitlines()) == 1, log
    assert "Traceback" not in log


def test_a_session_ended_with_its_input_unread_ends_in_order(
    forwarded_proxy: ProxyProcess,
    forwarder: TcpForwarder,
    direct: psycopg.Connection[tuple[object, ...]],
) -> None:
    """The upstream dies under a pgml statement while the client's pipelined input waits,
    unread, in the proxy's socket: the client reads the FATAL and then the end of the
    stream, as from PostgreSQL, never a reset (a reset that reaches a client before it
    reads the FATAL costs it the error: its driver reports a closed socket instead)."""
    client = RawClient(forwarded_proxy.port)
    client.login()
    pid = client.backend_pid
    client.send(query("SELECT pgml.chunk('character', t) FROM (SELECT 'a b', pg_sleep(30)) s(t)"))
    try:
        assert wait_for(lambda: "pg_sleep" in (active_query(direct, pid) or ""), timeout=5)
        client.sock.setblocking(False)
        sent = 0
        with contextlib.suppress(BlockingIOError):
            while True:  # until the proxy stops reading and every buffer on the way is full
                sent += client.sock.send(query("SELECT 1") * 4096)
        assert sent > 1 << 20
        client.sock.settimeout(10)
        assert forwarder.cut(reset=False) >= 1  # the session's and the proxy's own
        received = bytearray()
        while chunk := client.sock.recv(65536):  # a reset raises ConnectionResetError
            received += chunk
    finally:
        terminate(direct, pid)
    client.buffer[:] = received
    fields = only_fatal(client.read_to_eof())
    assert fields["C"] == "08006"
    client.close()
    assert_serves(forwarded_proxy)
    assert "Traceback" not in forwarded_proxy.log()


def test_upstream_cut_psycopg_mid_query(
    forwarded_proxy: ProxyProcess,
    forwarder: TcpForwarder,
    direct: psycopg.Connection[tuple[object, ...]],
    pool: ThreadPoolExecutor,
) -> None:
    """psycopg, blocked in pg_sleep, gets a connection error as soon as the upstream dies."""
    with psycopg.connect(forwarded_proxy.dsn(), autocommit=True) as victim:
        pid = victim.info.backend_pid
        running = pool.submit(victim.execute, "SELECT pg_sleep(10)")
        try:
            assert wait_for(lambda: active_query(direct, pid) is not None, timeout=3)
            forwarder.cut(reset=True)
            with pytest.raises(psycopg.OperationalError) as caught:
                running.result(timeout=5)
        finally:
            terminate(direct, pid)
        assert caught.value.sqlstate in (None, "08006"), caught.value
        assert "server closed the connection unexpectedly" in str(caught.value)
        assert victim.closed or victim.broken
    assert_serves(forwarded_proxy)


# --- the client vanishes mid-query -------------------------------------------------------


def test_client_disconnect_mid_query_cancels_backend(
    own_proxy: ProxyProcess, direct: psycopg.Connection[tuple[object, ...]]
) -> None:
    """A client closes its socket during pg_sleep(30): the backend's query ends within
    seconds, because the proxy cancels it."""
    marker = f"disconnect-{uuid.uuid4().hex}"
    client = RawClient(own_proxy.port)
    client.login()
    pid = client.backend_pid
    client.send(query(f"SELECT pg_sleep(30) /* {marker} */"))
    try:
        assert wait_for(lambda: marker in (active_query(direct, pid) or ""), timeout=3)
        client.close()
        assert wait_for(lambda: active_query(direct, pid) is None, timeout=3), (
            f"backend {pid} still runs the statement; proxy log:\n{own_proxy.log()}"
        )
        assert wait_for(lambda: not backend_exists(direct, pid), timeout=3)
    finally:
        terminate(direct, pid)
    assert_serves(own_proxy)
