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

import psycopg
import pytest

from tests.integration._differential import assert_same, exchange_both
from tests.support import rawclient as rc
from tests.support.fuzz import MODEL, STARTUP_CASES, VERSION_TWIN, VIOLATIONS
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

PGML_PREFIX = rc.parse("", "SELECT pgml.version()") + rc.bind("", "") + rc.execute() + rc.sync()
PLAIN_PREFIX = rc.parse("", VERSION_TWIN) + rc.bind("", "") + rc.execute() + rc.sync()


@pytest.fixture(scope="module", autouse=True)
def warm(proxy: ProxyProcess) -> None:
    """Load the embedding model first, so that no case waits for it."""
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"SELECT pgml.embed('{MODEL}', 'warm')")


@pytest.mark.parametrize("name", sorted(STARTUP_CASES))
def test_startup_phase(cluster: PostgresCluster, proxy: ProxyProcess, name: str) -> None:
    steps = STARTUP_CASES[name]
    direct, proxied = exchange_both(cluster.port, proxy.port, steps, steps, login=False)
    assert_same(direct, proxied)


@pytest.mark.parametrize("mode", ["fresh", "after-pgml"])
@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_protocol_violation(
    cluster: PostgresCluster, proxy: ProxyProcess, name: str, mode: str
) -> None:
    violation = VIOLATIONS[name]
    reference = violation.data if violation.twin is None else violation.twin
    setups = (PLAIN_PREFIX, PGML_PREFIX) if mode == "after-pgml" else (b"", b"")
    direct, proxied = exchange_both(
        cluster.port, proxy.port, (reference,), (violation.data,), setups=setups
    )
    assert_same(direct, proxied)
