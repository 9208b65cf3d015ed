"""Malformed or truncated client input ends only the offending connection, quietly."""

from __future__ import annotations

import asyncio
import os
import random
import struct
import subprocess
import time
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from tests.integration._wire import (
    SSL_REQUEST,
    RawClient,
    SilentServer,
    error_fields,
    query,
    startup_packet,
    wait_for,
)
from tests.support.pgserver import BIN, PostgresCluster, free_port
from tests.support.proxyproc import ProxyProcess

BAD_SESSION = 2
"""Session number of the misbehaving client: the bystander connects first, as session 1."""


@pytest.fixture
def own_proxy(cluster: PostgresCluster) -> Iterator[ProxyProcess]:
    process = ProxyProcess("--upstream", cluster.dsn()).start()
    yield process
    process.stop()


@pytest.fixture
def bystander(own_proxy: ProxyProcess) -> Iterator[psycopg.Connection[tuple[int]]]:
    """A healthy client connected through the same proxy before the bad input arrives."""
    with psycopg.connect(own_proxy.dsn(), autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        yield conn


def session_lines(proxy: ProxyProcess, session: int) -> list[str]:
    marker = f"session {session}:"
    return [line for line in proxy.log().splitlines() if marker in line]


def lines_about(proxy: ProxyProcess, session: int) -> list[str]:
    """Log lines that name the session or report a protocol violation."""
    marker = f"session {session}:"
    return [
        line for line in proxy.log().splitlines() if marker in line or "protocol violation" in line
    ]


def backend_alive(cluster: PostgresCluster, pid: int) -> bool:
    return cluster.psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}").strip() == "1"


def assert_fatal_protocol_violation(client: RawClient) -> dict[str, str]:
    """The proxy answers with one FATAL 08P01 and closes the connection."""
    messages = client.read_to_eof()
    errors = [error_fields(body) for mtype, body in messages if mtype == "E"]
    assert len(errors) == 1, messages
    assert errors[0]["S"] == "FATAL" and errors[0]["C"] == "08P01", errors[0]
    return errors[0]


def assert_silent_close(client: RawClient) -> None:
    """The proxy closes without a word, as PostgreSQL does for input it only logs."""
    assert client.read_to_eof() == []


def assert_contained(
    proxy: ProxyProcess,
    bystander: psycopg.Connection[tuple[int]],
    *,
    violation: bool = True,
) -> None:
    """The bad session left exactly one log line, nothing else did; the bystander works."""
    assert bystander.execute("SELECT 40 + 2").fetchone() == (42,)
    wait_for(lambda: bool(lines_about(proxy, BAD_SESSION)), timeout=3)
    time.sleep(0.3)  # a second line, if any, would come right after the first
    logged = lines_about(proxy, BAD_SESSION)
    assert len(logged) == 1, proxy.log()
    assert f"session {BAD_SESSION}:" in logged[0]
    if violation:
        assert "protocol violation" in logged[0]
    assert not session_lines(proxy, 1), proxy.log()
    assert "Traceback" not in proxy.log()
    assert bystander.execute("SELECT 'still here'").fetchone() == ("still here",)


def test_garbage_instead_of_startup_packet(
    own_proxy: ProxyProcess, bystander: psycopg.Connection[tuple[int]]
) -> None:
    """Random bytes where the startup packet belongs: PostgreSQL logs "invalid length of
    startup packet" and closes without sending anything."""
    garbage = random.Random(8).randbytes(200)
    assert struct.unpack_from("!I", garbage)[0] > 10_000
    client = RawClient(own_proxy.port)
    client.send(garbage)
    assert_silent_close(client)
    assert_contained(own_proxy, bystander)
    assert f"127.0.0.1:{client.local_port}" in session_lines(own_proxy, BAD_SESSION)[0]


def test_startup_packet_length_2_pow_31(
    own_proxy: ProxyProcess, bystander: psycopg.Connection[tuple[int]]
) -> None:
    """A startup packet whose length word is 2^31: logged, closed without a word."""
    packet = startup_packet()
    client = RawClient(own_proxy.port)
    client.send(struct.pack("!I", 2**31) + packet[4:])
    assert_silent_close(client)
    assert_contained(own_proxy, bystander)


def test_message_length_2_pow_31_after_login(
    cluster: PostgresCluster,
    own_proxy: ProxyProcess,
    bystander: psycopg.Connection[tuple[int]],
) -> None:
    """A Query whose length word is 2^31, after a valid startup and authentication:
    PostgreSQL logs "invalid message length" and closes without a word."""
    client = RawClient(own_proxy.port)
    client.login()
    assert backend_alive(cluster, client.backend_pid)
    client.send(b"Q" + struct.pack("!I", 2**31) + b"SELECT 1\x00")
    assert_silent_close(client)
    assert_contained(own_proxy, bystander)
    assert wait_for(lambda: not backend_alive(cluster, client.backend_pid), timeout=3)


def test_truncated_message_then_close(
    cluster: PostgresCluster,
    own_proxy: ProxyProcess,
    bystander: psycopg.Connection[tuple[int]],
) -> None:
    """The client sends half a message after login and closes its socket."""
    client = RawClient(own_proxy.port)
    client.login()
    whole = query("SELECT 'this message is cut short'")
    client.send(whole[: len(whole) // 2])
    client.close()
    assert wait_for(lambda: not backend_alive(cluster, client.backend_pid), timeout=3)
    assert_contained(own_proxy, bystander, violation=False)


def test_close_mid_startup_packet(
    own_proxy: ProxyProcess, bystander: psycopg.Connection[tuple[int]]
) -> None:
    """The client sends part of a startup packet and closes."""
    client = RawClient(own_proxy.port)
    client.send(startup_packet()[:12])
    time.sleep(0.1)
    client.close()
    assert_contained(own_proxy, bystander, violation=False)


def test_connect_send_nothing_close(
    own_proxy: ProxyProcess, bystander: psycopg.Connection[tuple[int]]
) -> None:
    """A port probe: connect and close without a byte.

    PostgreSQL logs nothing for these; the proxy may log at most one line.
    """
    client = RawClient(own_proxy.port)
    client.close()
    assert bystander.execute("SELECT 1").fetchone() == (1,)
    time.sleep(0.5)
    assert len(lines_about(own_proxy, BAD_SESSION)) <= 1, own_proxy.log()
    assert "Traceback" not in own_proxy.log()
    assert bystander.execute("SELECT 2").fetchone() == (2,)


def test_ssl_request_with_trailing_bytes(
    own_proxy: ProxyProcess, bystander: psycopg.Connection[tuple[int]]
) -> None:
    """An SSLRequest followed at once, in the same segment, by plaintext: PostgreSQL
    answers N, then the FATAL (with its DETAIL about a man-in-the-middle)."""
    client = RawClient(own_proxy.port)
    client.send(SSL_REQUEST + startup_packet())
    assert client.read_byte() == b"N"
    error = assert_fatal_protocol_violation(client)
    assert error["M"] == "received unencrypted data after SSL request"
    assert "man-in-the-middle" in error["D"]
    assert_contained(own_proxy, bystander)


# --- unreachable upstream ------------------------------------------------------------


def test_upstream_down_at_connect() -> None:
    """Nothing listens at --upstream: every client gets FATAL 08006 quickly, no hang."""
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    proxy = ProxyProcess("--upstream", dead, "--connect-timeout", "10").start()
    try:
        began = time.monotonic()
        result = subprocess.run(
            [str(BIN / "psql"), "-X", "-At", "-d", proxy.dsn(), "-c", "SELECT 1"],
            capture_output=True,
            text=True,
            timeout=15,
            env={**os.environ, "PGCONNECT_TIMEOUT": "12"},
        )
        assert time.monotonic() - began < 3
        assert result.returncode == 2, result
        assert "could not connect to upstream server" in result.stderr

        began = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as caught:
            psycopg.connect(proxy.dsn(), connect_timeout=12)
        assert time.monotonic() - began < 3
        assert "could not connect to upstream server" in str(caught.value)
        assert caught.value.sqlstate in (None, "08006")

        began = time.monotonic()
        with pytest.raises(asyncpg.PostgresError) as failed:
            asyncio.run(asyncpg.connect(proxy.dsn(), timeout=12))
        assert time.monotonic() - began < 3
        assert failed.value.sqlstate == "08006"
        assert "could not connect to upstream server" in str(failed.value)

        time.sleep(0.2)
        unreachable = [line for line in proxy.log().splitlines() if "unreachable" in line]
        assert len(unreachable) == 3, proxy.log()
        assert "Traceback" not in proxy.log()
    finally:
        proxy.stop()


def test_upstream_never_answers() -> None:
    """An upstream that accepts TCP but stays silent fails within --connect-timeout."""
    silent = SilentServer().start()
    proxy = ProxyProcess(
        "--upstream",
        f"postgresql://postgres@127.0.0.1:{silent.port}/postgres",
        "--connect-timeout",
        "1",
    ).start()
    try:
        began = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as caught:
            psycopg.connect(proxy.dsn(), connect_timeout=6)
        elapsed = time.monotonic() - began
        assert "could not connect to upstream server" in str(caught.value), proxy.log()
        assert elapsed < 2.5, f"error came after {elapsed:.1f} s"
        assert silent.accepted, "the proxy never reached the silent upstream"
    finally:
        proxy.stop()
        silent.stop()
