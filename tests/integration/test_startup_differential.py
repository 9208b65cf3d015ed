"""The startup phase and protocol errors, direct and through the proxy: the same bytes back.

Every startup-phase input and every protocol violation the fuzz generator knows
(:data:`~tests.support.fuzz.STARTUP_CASES`, :data:`~tests.support.fuzz.VIOLATIONS`) is
sent to PostgreSQL and to the proxy in the same writes, each read until the server closes
or falls silent before the next is sent (as an interactive client would).  After a login a
``SELECT 1`` follows, so the comparison covers whether, and how, the session is still usable.
Everything read must be the same bytes, or the same silence, and the connection must end (or
stay open) the same way.

Normalised explicitly, and nothing else: BackendKeyData (another backend, another secret)
and the ``F``/``L``/``R`` fields of ErrorResponse and NoticeResponse (the source file, line
and routine in the server that raised it), see :mod:`tests.support.replies`.

Violations are sent on a fresh session and on one that has already run a pgml statement
through the extended protocol (from then on the proxy frames every extended-protocol
message itself).  A violation whose statement calls a pgml function that PostgreSQL would
reach is compared with PostgreSQL's reply to its ``twin``: the same bytes with a plain
expression in place of the call.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.support import rawclient as rc
from tests.support.fuzz import MODEL, STARTUP_CASES, VIOLATIONS, login_packet
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess
from tests.support.replies import Reply, normalize, read_reply

QUIET = 1.0
"""Seconds of silence that end the reply to a write (a server that closes ends it at once)."""
FINAL_QUIET = 5.0
"""The same for the closing ``SELECT 1``, which a usable session answers at once."""
SETTLE = 0.15
"""Seconds to wait for more after a reply that ends with ReadyForQuery."""

PGML_PREFIX = rc.parse("", "SELECT pgml.version()") + rc.bind("", "") + rc.execute() + rc.sync()
PLAIN_PREFIX = rc.parse("", "SELECT 'x'::text") + rc.bind("", "") + rc.execute() + rc.sync()


@pytest.fixture(scope="module", autouse=True)
def warm(proxy: ProxyProcess) -> None:
    """Load the embedding model first, so that no case waits for it."""
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"SELECT pgml.embed('{MODEL}', 'warm')")


def _drain_to_ready(sock: socket.socket) -> None:
    data = b""
    sock.settimeout(10.0)
    while not data.endswith(b"Z\x00\x00\x00\x05I"):
        chunk = sock.recv(65536)
        assert chunk, f"session ended during set-up: {data!r}"
        data += chunk


def exchange(port: int, steps: tuple[bytes, ...], login: bool, prefix: bytes = b"") -> Reply:
    """Send ``steps`` one at a time on a new connection, reading until quiet after each;
    after a login, then ``SELECT 1`` (is the session still usable?).  Everything read, and
    whether the server closed."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10.0) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if login:
            sock.sendall(login_packet("differential"))
            _drain_to_ready(sock)
            if prefix:
                sock.sendall(prefix)
                _drain_to_ready(sock)
            steps = (*steps, rc.query("SELECT 1"))
        for i, step in enumerate(steps):
            try:
                sock.sendall(step)
            except OSError:
                return Reply(tuple(normalize(data)), True)
            last = i == len(steps) - 1
            chunk, closed = read_reply(
                sock, quiet=FINAL_QUIET if last and login else QUIET, settle=SETTLE
            )
            data += chunk
            if closed:
                return Reply(tuple(normalize(data)), True)
    return Reply(tuple(normalize(data)), False)


def both(
    cluster: PostgresCluster,
    proxy: ProxyProcess,
    direct_steps: tuple[bytes, ...],
    proxied_steps: tuple[bytes, ...],
    login: bool,
    prefixes: tuple[bytes, bytes] = (b"", b""),
) -> tuple[Reply, Reply]:
    with ThreadPoolExecutor(2) as pool:
        direct = pool.submit(exchange, cluster.port, direct_steps, login, prefixes[0])
        proxied = pool.submit(exchange, proxy.port, proxied_steps, login, prefixes[1])
        return direct.result(), proxied.result()


def assert_same(direct: Reply, proxied: Reply) -> None:
    assert proxied == direct, (
        f"\n  PostgreSQL: {direct.describe()}\n  proxy:      {proxied.describe()}"
    )


@pytest.mark.parametrize("name", sorted(STARTUP_CASES))
def test_startup_phase(cluster: PostgresCluster, proxy: ProxyProcess, name: str) -> None:
    steps = STARTUP_CASES[name]
    direct, proxied = both(cluster, proxy, steps, steps, login=False)
    assert_same(direct, proxied)


@pytest.mark.parametrize("mode", ["fresh", "after-pgml"])
@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_protocol_violation(
    cluster: PostgresCluster, proxy: ProxyProcess, name: str, mode: str
) -> None:
    violation = VIOLATIONS[name]
    reference = violation.data if violation.twin is None else violation.twin
    prefixes = (PLAIN_PREFIX, PGML_PREFIX) if mode == "after-pgml" else (b"", b"")
    direct, proxied = both(
        cluster, proxy, (reference,), (violation.data,), login=True, prefixes=prefixes
    )
    assert_same(direct, proxied)
