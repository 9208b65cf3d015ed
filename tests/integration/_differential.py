"""The same bytes sent straight to PostgreSQL and through the proxy, and the replies compared.

:func:`exchange` plays writes on one new connection the way an interactive client would
(each write's reply read until the server closes or falls silent before the next write);
after a login it ends with ``SELECT 1``, so what is compared includes whether the session is
still usable.  Replies are normalised by :func:`tests.support.replies.normalize`.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

from tests.support import rawclient as rc
from tests.support.fuzz import login_packet
from tests.support.replies import Reply, normalize, read_reply

QUIET = 1.0
"""Seconds of silence that end the reply to a write (a server that closes ends it at once)."""
FINAL_QUIET = 15.0
"""The same for the closing ``SELECT 1``, which a usable session answers at once (so that
a slow answer is not taken for none)."""
SETTLE = 0.15
"""Seconds to wait for more after a reply that ends with ReadyForQuery."""
PROBE = rc.query("SELECT 1")


def drain_to_ready(sock: socket.socket) -> bytes:
    """Read through the next ReadyForQuery (any status) that ends what arrived."""
    data = b""
    sock.settimeout(10.0)
    while data[-6:-1] != b"Z\x00\x00\x00\x05":
        chunk = sock.recv(65536)
        assert chunk, f"session ended during set-up: {data!r}"
        data += chunk
    return data


def exchange(port: int, steps: tuple[bytes, ...], login: bool = True, setup: bytes = b"") -> Reply:
    """Send ``steps`` one at a time on a new connection, after a login and ``setup`` (whose
    replies are not kept) when ``login``; everything read, and whether the server closed."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10.0) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if login:
            sock.sendall(login_packet("differential"))
            drain_to_ready(sock)
            if setup:
                sock.sendall(setup)
                drain_to_ready(sock)
            steps = (*steps, PROBE)
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


def exchange_both(
    direct_port: int,
    proxy_port: int,
    direct_steps: tuple[bytes, ...],
    proxied_steps: tuple[bytes, ...],
    login: bool = True,
    setups: tuple[bytes, bytes] = (b"", b""),
) -> tuple[Reply, Reply]:
    """:func:`exchange` direct and through the proxy at the same time."""
    with ThreadPoolExecutor(2) as pool:
        direct = pool.submit(exchange, direct_port, direct_steps, login, setups[0])
        proxied = pool.submit(exchange, proxy_port, proxied_steps, login, setups[1])
        return direct.result(), proxied.result()


def assert_same(direct: Reply, proxied: Reply) -> None:
    assert proxied == direct, (
        f"\n  PostgreSQL: {direct.describe()}\n  proxy:      {proxied.describe()}"
    )
