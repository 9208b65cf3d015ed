"""Password authentication through the proxy: md5, SCRAM-SHA-256 and cleartext.

Successful logins go through psql, psycopg and asyncpg; failed ones are compared with the
same attempt made directly against the cluster, down to the ErrorResponse bytes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid

import asyncpg
import psycopg
import pytest

from tests.conftest import PASSWORDS
from tests.support import rawclient as rc
from tests.support.pgserver import BIN, PostgresCluster
from tests.support.proxyproc import ProxyProcess
from tests.support.rawclient import Message, RawClient

USERS = ["md5_user", "scram_user", "plain_user"]
EXPECTED_AUTH = {
    "md5_user": rc.AUTH_MD5,
    "scram_user": rc.AUTH_SASL,
    "plain_user": rc.AUTH_CLEARTEXT,
}


def raw_login(
    port: int, user: str, password: str | None, database: str = "postgres"
) -> list[Message]:
    with RawClient.connect("127.0.0.1", port) as client:
        return client.startup(user, database, password)


def psycopg_error(dsn: str, **params: str) -> str:
    """The message of the OperationalError a failed connection attempt raises."""
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(psycopg.conninfo.make_conninfo(dsn, connect_timeout="5", **params)).close()
    return str(info.value)


def asyncpg_error(dsn: str, **kwargs: str) -> asyncpg.PostgresError:
    """The server error a failed asyncpg connection attempt raises."""

    async def attempt() -> None:
        conn = await asyncpg.connect(dsn, timeout=5, **kwargs)
        await conn.close()

    with pytest.raises(asyncpg.PostgresError) as info:
        asyncio.run(attempt())
    return info.value


def without_port(text: str, *ports: int) -> str:
    for port in ports:
        text = text.replace(f"port {port}", "port N")
    return text


# --- right password --------------------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
def test_psql_login(proxy: ProxyProcess, user: str) -> None:
    result = subprocess.run(
        [str(BIN / "psql"), "-X", "-At", proxy.dsn(user), "-c", "SELECT current_user"],
        capture_output=True,
        text=True,
        timeout=10,
        env={**os.environ, "PGPASSWORD": PASSWORDS[user]},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == user


@pytest.mark.parametrize("user", USERS)
def test_psycopg_login(proxy: ProxyProcess, user: str) -> None:
    with psycopg.connect(proxy.dsn(user), password=PASSWORDS[user], connect_timeout=5) as conn:
        row = conn.execute("SELECT current_user, session_user, 6 * 7").fetchone()
        assert row == (user, user, 42)
        assert conn.pgconn.used_password


@pytest.mark.parametrize("user", USERS)
def test_asyncpg_login(proxy: ProxyProcess, user: str) -> None:
    async def login() -> tuple[str, int]:
        conn = await asyncpg.connect(proxy.dsn(user), password=PASSWORDS[user], timeout=5)
        try:
            row = await conn.fetchrow("SELECT current_user AS who, $1::int * 2 AS n", 21)
            assert row is not None
            return row["who"], row["n"]
        finally:
            await conn.close()

    assert asyncio.run(login()) == (user, 42)


@pytest.mark.parametrize("user", USERS)
def test_raw_exchange_matches_direct(
    cluster: PostgresCluster, proxy: ProxyProcess, user: str
) -> None:
    """The same authentication requests arrive in the same order; salts and nonces aside."""
    direct = raw_login(cluster.port, user, PASSWORDS[user])
    proxied = raw_login(proxy.port, user, PASSWORDS[user])
    assert [m.type for m in proxied] == [m.type for m in direct]
    auth_codes = [m.auth_code for m in direct if m.type == b"R"]
    assert auth_codes[0] == EXPECTED_AUTH[user]
    assert [m.auth_code for m in proxied if m.type == b"R"] == auth_codes
    if user == "scram_user":
        # The mechanism list: no SCRAM-SHA-256-PLUS, since the upstream is plain TCP.
        assert proxied[0].raw == direct[0].raw
    after_auth = [m.raw for m in direct if m.type in (b"S", b"Z")]
    assert [m.raw for m in proxied if m.type in (b"S", b"Z")] == after_auth


# --- wrong password --------------------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
def test_wrong_password_error_bytes_identical(
    cluster: PostgresCluster, proxy: ProxyProcess, user: str
) -> None:
    direct = raw_login(cluster.port, user, "not the password")
    proxied = raw_login(proxy.port, user, "not the password")
    assert proxied[-1].type == b"E"
    assert proxied[-1].raw == direct[-1].raw
    fields = rc.error_fields(proxied[-1].body)
    assert (fields["S"], fields["C"]) == ("FATAL", "28P01")
    assert fields["M"] == f'password authentication failed for user "{user}"'


@pytest.mark.parametrize("user", USERS)
def test_wrong_password_psycopg(cluster: PostgresCluster, proxy: ProxyProcess, user: str) -> None:
    proxied = psycopg_error(proxy.dsn(user), password="not the password")
    direct = psycopg_error(cluster.dsn(user), password="not the password")
    assert f'password authentication failed for user "{user}"' in proxied
    assert without_port(proxied, proxy.port) == without_port(direct, cluster.port)


@pytest.mark.parametrize("user", USERS)
def test_wrong_password_asyncpg(cluster: PostgresCluster, proxy: ProxyProcess, user: str) -> None:
    proxied = asyncpg_error(proxy.dsn(user), password="not the password")
    direct = asyncpg_error(cluster.dsn(user), password="not the password")
    assert isinstance(proxied, asyncpg.InvalidPasswordError)
    assert proxied.sqlstate == "28P01"
    assert proxied.as_dict() == direct.as_dict()


def test_missing_password_psycopg(proxy: ProxyProcess) -> None:
    """A client that has no password to give fails on its side, promptly."""
    error = psycopg_error(proxy.dsn("scram_user"), password="", passfile="/nonexistent")
    assert "no password supplied" in error


# --- no such database or role ----------------------------------------------------------


def test_nonexistent_database(cluster: PostgresCluster, proxy: ProxyProcess) -> None:
    database = f"nodb_{uuid.uuid4().hex[:8]}"
    direct = raw_login(cluster.port, "postgres", None, database)
    proxied = raw_login(proxy.port, "postgres", None, database)
    assert [m.raw for m in proxied] == [m.raw for m in direct]
    fields = rc.error_fields(proxied[-1].body)
    assert (fields["C"], fields["M"]) == ("3D000", f'database "{database}" does not exist')

    message = psycopg_error(proxy.dsn("postgres", database=database))
    assert f'database "{database}" does not exist' in message
    error = asyncpg_error(proxy.dsn("postgres", database=database))
    assert isinstance(error, asyncpg.InvalidCatalogNameError)
    assert error.as_dict() == asyncpg_error(cluster.dsn("postgres", database=database)).as_dict()


def test_nonexistent_role(cluster: PostgresCluster, proxy: ProxyProcess) -> None:
    role = f"norole_{uuid.uuid4().hex[:8]}"
    direct = raw_login(cluster.port, role, None)
    proxied = raw_login(proxy.port, role, None)
    assert [m.raw for m in proxied] == [m.raw for m in direct]
    fields = rc.error_fields(proxied[-1].body)
    assert (fields["C"], fields["M"]) == ("28000", f'role "{role}" does not exist')

    message = psycopg_error(proxy.dsn(role))
    assert f'role "{role}" does not exist' in message
    error = asyncpg_error(proxy.dsn(role))
    assert isinstance(error, asyncpg.InvalidAuthorizationSpecificationError)
    assert error.as_dict() == asyncpg_error(cluster.dsn(role)).as_dict()
