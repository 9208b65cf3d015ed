"""Protocol versions and query cancellation through the proxy.

Protocol 3.2 (PostgreSQL 18) has 32-byte cancel keys; unsupported versions must get the
server's own answer; a CancelRequest reaches exactly the session whose key it carries.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

import psycopg
import pytest

from tests.support import rawclient as rc
from tests.support.pgserver import BIN, PostgresCluster
from tests.support.proxyproc import ProxyProcess
from tests.support.rawclient import Message, RawClient

VERSIONS = pytest.mark.parametrize("version", [(3, 0), (3, 2)], ids=["3.0", "3.2"])
SLEEP = rc.query("SELECT pg_sleep(10)")


def normalize(messages: list[Message]) -> list[bytes]:
    return [rc.msg(b"K", bytes(len(m.body))) if m.type == b"K" else m.raw for m in messages]


def open_session(port: int, version: tuple[int, int]) -> tuple[RawClient, int, bytes]:
    """A logged-in raw session and its (pid, secret) cancel key."""
    client = RawClient.connect("127.0.0.1", port)
    messages = client.startup("postgres", version=version)
    assert messages[-1].type == b"Z", messages[-1]
    key = next(m for m in messages if m.type == b"K")
    pid, secret = rc.backend_key(key.body)
    return client, pid, secret


def send_cancel(port: int, pid: int, secret: bytes) -> bytes:
    """Send a CancelRequest on its own connection; return what came back before close."""
    with RawClient.connect("127.0.0.1", port) as client:
        client.send(rc.cancel_request(pid, secret))
        return client.read_to_eof(timeout=3.0)


def expect_canceled(client: RawClient, within: float = 1.0) -> Message:
    """The running statement ends with 57014 within ``within`` seconds; return the error."""
    began = time.monotonic()
    reply = client.read_until_ready(timeout=within + 1.0)
    elapsed = time.monotonic() - began
    errors = [m for m in reply if m.type == b"E"]
    assert errors, reply
    assert rc.error_fields(errors[0].body)["C"] == "57014"
    assert elapsed < within, f"cancel took {elapsed:.2f}s"
    return errors[0]


def still_running(client: RawClient, seconds: float = 0.5) -> bool:
    return not client.has_data(seconds)


# --- protocol 3.2 ----------------------------------------------------------------------


def test_psql_protocol_32(proxy: ProxyProcess) -> None:
    result = subprocess.run(
        [
            str(BIN / "psql"),
            "-X",
            "-At",
            proxy.dsn(max_protocol_version="3.2"),
            "-c",
            r"\conninfo",
            "-c",
            "SELECT 40 + 2",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
    )
    assert result.returncode == 0, result.stderr
    assert "Protocol Version|3.2" in result.stdout.splitlines()
    assert result.stdout.strip().endswith("42")


def test_psql_protocol_32_from_environment(proxy: ProxyProcess) -> None:
    result = subprocess.run(
        [str(BIN / "psql"), "-X", "-At", proxy.dsn(), "-c", r"\conninfo"],
        capture_output=True,
        text=True,
        timeout=10,
        env={**os.environ, "PGMAXPROTOCOLVERSION": "3.2", "PGCONNECT_TIMEOUT": "5"},
    )
    assert result.returncode == 0, result.stderr
    assert "Protocol Version|3.2" in result.stdout.splitlines()


def test_psycopg_protocol_32_cancel(proxy: ProxyProcess) -> None:
    """libpq's own cancel with a 32-byte key, through the proxy."""
    with psycopg.connect(
        proxy.dsn(max_protocol_version="3.2"), connect_timeout=5, autocommit=True
    ) as conn:
        assert conn.pgconn.full_protocol_version == 30002
        timer = threading.Timer(0.3, conn.cancel_safe)
        timer.start()
        began = time.monotonic()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(10)")
        finally:
            timer.cancel()
        assert time.monotonic() - began < 1.5
        assert conn.execute("SELECT 1").fetchone() == (1,)


@VERSIONS
def test_raw_cancel(
    cluster: PostgresCluster, proxy: ProxyProcess, version: tuple[int, int]
) -> None:
    """The proxy's key cancels the query; the 57014 error is byte-identical to direct."""
    errors: list[bytes] = []
    for port in (cluster.port, proxy.port):
        client, pid, secret = open_session(port, version)
        with client:
            assert len(secret) == (4 if version == (3, 0) else 32)
            client.send(SLEEP)
            time.sleep(0.2)
            assert send_cancel(port, pid, secret) == b""
            errors.append(expect_canceled(client).raw)
            client.send(rc.query("SELECT 1"))
            assert [m.type for m in client.read_until_ready()] == [b"T", b"D", b"C", b"Z"]
    assert errors[1] == errors[0]


@VERSIONS
def test_cancel_with_wrong_key_does_nothing(proxy: ProxyProcess, version: tuple[int, int]) -> None:
    client, pid, secret = open_session(proxy.port, version)
    with client:
        client.send(SLEEP)
        time.sleep(0.1)
        wrong_secret = bytes([secret[0] ^ 0xFF]) + secret[1:]
        for bad_pid, bad_secret in [(pid, wrong_secret), (pid + 1, secret), (pid, secret[:-1])]:
            send_cancel(proxy.port, bad_pid, bad_secret)
        assert still_running(client, 0.7)
        send_cancel(proxy.port, pid, secret)
        expect_canceled(client)


@VERSIONS
def test_cancel_reaches_only_its_session(proxy: ProxyProcess, version: tuple[int, int]) -> None:
    sessions = [open_session(proxy.port, version) for _ in range(3)]
    try:
        assert len({pid for _, pid, _ in sessions}) == 3
        for client, _, _ in sessions:
            client.send(SLEEP)
        time.sleep(0.2)
        target, pid, secret = sessions[1]
        send_cancel(proxy.port, pid, secret)
        expect_canceled(target)
        others = [sessions[0][0], sessions[2][0]]
        assert all(still_running(client) for client in others)
        for client, pid, secret in (sessions[0], sessions[2]):
            send_cancel(proxy.port, pid, secret)
            expect_canceled(client)
    finally:
        for client, _, _ in sessions:
            client.close()


# --- other versions ----------------------------------------------------------------------


@pytest.mark.parametrize("version", [(2, 0), (4, 0)], ids=["2.0", "4.0"])
def test_unsupported_major_version(
    cluster: PostgresCluster, proxy: ProxyProcess, version: tuple[int, int]
) -> None:
    """The client gets the server's rejection, byte for byte, and the connection closes."""
    replies: list[bytes] = []
    for port in (cluster.port, proxy.port):
        with RawClient.connect("127.0.0.1", port) as client:
            client.send(rc.startup_message({"user": "postgres", "database": "postgres"}, version))
            replies.append(client.read_to_eof(timeout=3.0))
    assert b"unsupported frontend protocol" in replies[0]
    assert replies[1] == replies[0], proxy.log()[-1000:]


@pytest.mark.parametrize(
    ("version", "extra"),
    [((3, 99), {}), ((3, 99), {"_pq_.some_option": "on"}), ((3, 0), {"_pq_.other": "1"})],
    ids=["3.99", "3.99-option", "3.0-option"],
)
def test_negotiate_protocol_version_relayed(
    cluster: PostgresCluster, proxy: ProxyProcess, version: tuple[int, int], extra: dict[str, str]
) -> None:
    """NegotiateProtocolVersion and the rest of the startup are relayed as direct."""
    replies: list[list[bytes]] = []
    for port in (cluster.port, proxy.port):
        with RawClient.connect("127.0.0.1", port) as client:
            messages = client.startup("postgres", version=version, **extra)
            client.send(rc.query("SELECT 1"))
            replies.append(normalize(messages + client.read_until_ready()))
    assert replies[1] == replies[0]
    assert replies[0][0][:1] == b"v"
    assert replies[0][-1] == rc.msg(b"Z", b"I")


def test_negotiated_32_session_cancels(proxy: ProxyProcess) -> None:
    """A 3.99 request settles on 3.2: a 32-byte key that the proxy maps for cancel."""
    client, pid, secret = open_session(proxy.port, (3, 99))
    with client:
        assert len(secret) == 32
        client.send(SLEEP)
        time.sleep(0.2)
        send_cancel(proxy.port, pid, secret)
        expect_canceled(client)
