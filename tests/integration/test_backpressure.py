"""A slow reader of a huge result must not make the proxy buffer the result in memory."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.integration._wire import RawClient, error_fields, query
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
