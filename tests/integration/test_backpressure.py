"""A slow reader of a huge result must not make the proxy buffer the result in memory."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import psutil
import psycopg
import pytest

from tests.integration._wire import RawClient, error_fields, query, startup_packet
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

ROWS = 300_000
WIDTH = 1000
SQL = f"SELECT repeat('x', {WIDTH}) FROM generate_series(1, {ROWS})"
"""About 300 MB of DataRows."""
RSS_GROWTH_LIMIT = 64 * 2**20
STALL_SECONDS = 4.0


@pytest.fixture
def own_proxy(cluster: PostgresCluster) -> Iterator[ProxyProcess]:
    process = ProxyProcess("--upstream", cluster.dsn()).start()
    yield process
    process.stop()


def drain_result(sock: socket.socket, pending: bytes) -> tuple[int, int, str, str]:
    """Read to ReadyForQuery; return (rows, rows of the wrong size, command tag, status)."""
    buf = bytearray(pending)
    rows = wrong = 0
    tag = ""
    unpack = struct.Struct("!I").unpack_from
    row_length = 4 + 2 + 4 + WIDTH
    while True:
        pos = 0
        end = len(buf)
        while end - pos >= 5:
            mtype = buf[pos]
            length = unpack(buf, pos + 1)[0]
            if end - pos < 1 + length:
                break
            if mtype == 0x44:  # DataRow
                rows += 1
                wrong += length != row_length
            elif mtype == 0x43:  # CommandComplete
                tag = buf[pos + 5 : pos + length].decode()
            elif mtype == 0x45:  # ErrorResponse
                raise AssertionError(error_fields(bytes(buf[pos + 5 : pos + 1 + length])))
            elif mtype == 0x5A:  # ReadyForQuery
                return rows, wrong, tag, chr(buf[pos + 5])
            pos += 1 + length
        del buf[:pos]
        chunk = sock.recv(4 * 2**20)
        if not chunk:
            raise EOFError(f"connection closed after {rows} rows")
        buf += chunk


def test_slow_reader_keeps_proxy_memory_bounded(
    cluster: PostgresCluster, own_proxy: ProxyProcess
) -> None:
    """The client stalls for a few seconds on a ~300 MB result: the proxy's RSS grows by
    less than 64 MB and the backend waits on its socket; then every row arrives."""
    assert own_proxy.process is not None
    proxy_process = psutil.Process(own_proxy.process.pid)
    client = RawClient(own_proxy.port, timeout=30)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.login()
    baseline = proxy_process.memory_info().rss

    client.send(query(SQL))
    peak = baseline
    stall_end = time.monotonic() + STALL_SECONDS
    while time.monotonic() < stall_end:
        peak = max(peak, proxy_process.memory_info().rss)
        time.sleep(0.05)
    wait_event = cluster.psql(
        f"SELECT wait_event FROM pg_stat_activity WHERE pid = {client.backend_pid}"
    ).strip()
    growth = peak - baseline
    assert growth < RSS_GROWTH_LIMIT, f"proxy RSS grew by {growth / 2**20:.1f} MiB"
    assert wait_event == "ClientWrite", f"backend not blocked on its socket: {wait_event!r}"

    began = time.monotonic()
    rows, wrong, tag, status = drain_result(client.sock, bytes(client.buffer))
    assert (rows, wrong, tag, status) == (ROWS, 0, f"SELECT {ROWS}", "I")
    assert time.monotonic() - began < 15
    client.send(query("SELECT 'after'"))
    assert [m for m, _ in client.read_until_ready()] == ["T", "D", "C", "Z"]
    client.close()


# --- reading no further ahead of the client than a socket buffer ---------------------------

COPY_ROWS = 1_000_000
COPY_SQL = f"COPY (SELECT generate_series(1, {COPY_ROWS})) TO STDOUT"


def _cancel_after_one_row(dsn: str) -> psycopg.pq.TransactionStatus:
    """psycopg's test_copy_out_error_with_copy_not_finished: one row of a COPY read, then
    the block left by an exception, which cancels the COPY (the transaction fails unless
    the COPY had ended before the cancel came)."""
    with psycopg.connect(dsn) as conn:
        cur = conn.cursor()
        with pytest.raises(ZeroDivisionError), cur.copy(COPY_SQL) as copy:
            copy.read_row()
            1 / 0  # noqa: B018
        return conn.info.transaction_status


def _cancel_after_one_message(port: int) -> tuple[str, str]:
    """The same over the wire: the COPY's error and the status after it."""
    client = RawClient(port, timeout=30)
    client.send(startup_packet())
    key = b""
    for mtype, body in client.read_until_ready():
        if mtype == "K":
            key = body
    client.send(query(f"BEGIN; {COPY_SQL}"))
    assert [client.read_message()[0] for _ in range(3)] == ["C", "H", "d"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as cancel:
        cancel.sendall(struct.pack("!II", 8 + len(key), 80877102) + key)
        cancel.recv(1)
    errors = [error_fields(body) for mtype, body in client.read_until_ready() if mtype == "E"]
    client.send(query("SELECT 1"))
    status = client.read_until_ready()[-1][1].decode()
    client.close()
    return ",".join(e["C"] for e in errors), status


@pytest.mark.parametrize("attempt", range(4))
def test_cancel_after_one_row_of_a_copy_finds_it_running(
    cluster: PostgresCluster, own_proxy: ProxyProcess, direct_dsn: str, attempt: int
) -> None:
    failed = psycopg.pq.TransactionStatus.INERROR
    assert _cancel_after_one_row(direct_dsn) == failed
    assert _cancel_after_one_row(own_proxy.dsn()) == failed
    assert _cancel_after_one_message(cluster.port) == ("57014", "E")
    assert _cancel_after_one_message(own_proxy.port) == ("57014", "E")


READ_AHEAD_LIMIT = 1 << 20
"""Bytes the proxy may read from PostgreSQL beyond what PostgreSQL itself would have
sent a stalled client: about one socket buffer."""
COPY_ROW_BYTES = 5 + len("1000000\n")


def _copied_while_stalled(cluster: PostgresCluster, port: int) -> int:
    """Rows a ``COPY ... TO STDOUT`` has produced once its client has stalled for a while
    after the first message (from ``pg_stat_progress_copy``)."""
    client = RawClient(port, timeout=30)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.login()
    client.send(query(COPY_SQL))
    assert client.read_message()[0] == "H"
    progress = (
        f"SELECT tuples_processed FROM pg_stat_progress_copy WHERE pid = {client.backend_pid}"
    )
    last = -1
    while True:  # until the backend waits on its socket
        time.sleep(0.5)
        now = int(cluster.psql(progress).strip() or COPY_ROWS)
        if now == last:
            break
        last = now
    client.close()
    return last


def test_the_proxy_reads_no_further_ahead_than_a_socket_buffer(
    cluster: PostgresCluster, own_proxy: ProxyProcess
) -> None:
    direct = _copied_while_stalled(cluster, cluster.port)
    proxied = _copied_while_stalled(cluster, own_proxy.port)
    assert direct < COPY_ROWS
    assert (proxied - direct) * COPY_ROW_BYTES < READ_AHEAD_LIMIT, (direct, proxied)


def test_a_slow_reader_of_a_copy_gets_every_row_and_the_proxy_stays_behind_it(
    cluster: PostgresCluster, own_proxy: ProxyProcess
) -> None:
    """The client reads a 13 MB COPY 64 KB at a time with pauses: PostgreSQL never runs
    further ahead of it than it would without the proxy and a socket buffer, and every
    row arrives in order."""
    direct_lead = _copied_while_stalled(cluster, cluster.port) * COPY_ROW_BYTES
    client = RawClient(own_proxy.port, timeout=30)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.login()
    client.send(query(COPY_SQL))
    progress = (
        f"SELECT tuples_processed FROM pg_stat_progress_copy WHERE pid = {client.backend_pid}"
    )
    received = 0
    expected_row = 1
    leads = []
    while True:
        mtype, body = client.read_message()
        if mtype == "d":
            assert body == f"{expected_row}\n".encode()
            expected_row += 1
            received += 1
            if received % 100_000 == 0:
                time.sleep(0.3)
                produced = int(cluster.psql(progress).strip() or COPY_ROWS)
                leads.append((produced - received) * COPY_ROW_BYTES)
        elif mtype == "Z":
            break
    assert received == COPY_ROWS
    assert leads and max(leads) < direct_lead + READ_AHEAD_LIMIT, (direct_lead, leads)
    client.close()
