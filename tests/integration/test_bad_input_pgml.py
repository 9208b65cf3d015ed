"""Bad input in statements that call pgml functions gets PostgreSQL's own answer.

Each test sends the same bytes straight to PostgreSQL and through the proxy.  Where
PostgreSQL rejects the bytes before it would look the pgml function up (encoding checks,
message framing, the raw parser) the very same bytes are its reference; where it would
reach the function (which does not exist in PostgreSQL), the reference is a twin statement
with a plain expression of the same shape in place of the call.  PostgreSQL's answers,
found by experiment with PostgreSQL 18: invalid UTF-8 is ``22021`` and the session goes
on; a Bind whose parameters run past the message is ``08P01`` "insufficient data left in
message" (an ERROR: the session and its prepared statements go on); 20,000 nested
parentheses are the parser's ``42601`` "memory exhausted"; a 50,000-term expression is
``54001``; a declared message length past PostgreSQL's limits, or an unknown message type,
ends the connection (the first silently, the second with FATAL ``08P01``), and with it the
backend.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator

import psycopg
import pytest

from proxy import __version__
from tests.integration._differential import assert_same, exchange_both
from tests.support import rawclient as rc
from tests.support.fuzz import MODEL, VERSION_TWIN, nested
from tests.support.fuzzrun import wait_for_backends
from tests.support.rawclient import RawClient
from tests.support.replies import Reply, normalize
from tests.support.stack import Stack, private_stack

APPLICATION = "pgml-bad-input"

BIND_STATEMENT = "bad_bind_s"
PREPARE_PGML = (
    rc.parse(BIND_STATEMENT, "SELECT pgml.version() AS version, $1::text AS p") + rc.sync()
)
PREPARE_TWIN = rc.parse(BIND_STATEMENT, f"{VERSION_TWIN}, $1::text AS p") + rc.sync()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with private_stack() as running:
        yield running


def same_bytes(stack: Stack, *steps: bytes, setup: bytes = b"") -> Reply:
    """``steps`` get the same replies direct and through the proxy; return those."""
    direct, proxied = exchange_both(
        stack.cluster.port, stack.proxy.port, steps, steps, setups=(setup, setup)
    )
    assert_same(direct, proxied)
    return direct


def same_as_twin(
    stack: Stack,
    proxied: tuple[bytes, ...],
    twin: tuple[bytes, ...],
    setup: bytes = b"",
    twin_setup: bytes = b"",
) -> Reply:
    """``proxied`` through the proxy gets PostgreSQL's replies to ``twin``; return those."""
    direct, through = exchange_both(
        stack.cluster.port, stack.proxy.port, twin, proxied, setups=(twin_setup, setup)
    )
    assert_same(direct, through)
    return direct


def raw_session(port: int) -> tuple[RawClient, int]:
    client = RawClient.connect("127.0.0.1", port, timeout=10.0)
    messages = client.startup("postgres", application_name=APPLICATION)
    assert messages[-1].type == b"Z", messages
    pid, _ = rc.backend_key(next(m for m in messages if m.type == b"K").body)
    return client, pid


def backend_gone(stack: Stack, pid: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if stack.cluster.psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}") == "0\n":
            return True
        time.sleep(0.05)
    return False


def no_traceback(stack: Stack) -> None:
    assert "Traceback" not in stack.proxy.log(), stack.proxy.log()[-3000:]


# --- invalid UTF-8 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        b"SELECT pgml.version(), '\xff'",
        b"SELECT pgml.embed('" + MODEL.encode() + b"', 'caf\xc3\x28')",
        b"SELECT pgml.version(); SELECT '\xfe'",
        b"SELECT pgml.version() -- \xc0\xaf",
        b"SELECT pgml.version(), '\xed\xa0\x80'",
        b"SELECT pgml.version(), '\xf8\x88\x80\x80\x80'",
    ],
    ids=["literal", "embed-argument", "second-statement", "comment", "surrogate", "5-byte"],
)
def test_invalid_utf8_in_pgml_query(stack: Stack, sql: bytes) -> None:
    """22021, nothing runs, the session is usable: as PostgreSQL."""
    assert same_bytes(stack, rc.msg(b"Q", sql + b"\x00")).codes == ["22021"]


def test_invalid_utf8_in_pgml_query_in_transaction(stack: Stack) -> None:
    """Inside BEGIN the error aborts the transaction (the next statement gets 25P02)."""
    bad = rc.msg(b"Q", b"SELECT pgml.version(), '\xff'\x00")
    assert same_bytes(stack, bad, setup=rc.query("BEGIN")).codes == ["22021", "25P02"]


def test_invalid_utf8_runs_no_statement(stack: Stack) -> None:
    """PostgreSQL checks the whole Query before it runs any of it: the INSERT before the
    bad byte never happens, direct or through the proxy."""
    table = "bad_utf8_rows"
    stack.cluster.psql(f"CREATE TABLE IF NOT EXISTS {table} (a int)")
    sql = f"INSERT INTO {table} VALUES (1); SELECT pgml.version(), '".encode() + b"\xff'\x00"
    assert same_bytes(stack, rc.msg(b"Q", sql)).codes == ["22021"]
    assert stack.cluster.psql(f"SELECT count(*) FROM {table}") == "0\n"


@pytest.mark.parametrize("name", ["", "bad_utf8_statement"], ids=["unnamed", "named"])
def test_invalid_utf8_in_pgml_parse(stack: Stack, name: str) -> None:
    """Parse is refused with 22021; a named statement is then not there (26000)."""
    parse = rc.msg(b"P", rc.cstr(name) + b"SELECT pgml.version(), '\xff'\x00\x00\x00")
    reply = same_bytes(stack, parse + rc.sync(), rc.describe(b"S", name) + rc.sync())
    assert reply.codes == ["22021", "26000"]


def test_invalid_utf8_in_bind_parameter(stack: Stack) -> None:
    """A text parameter with invalid UTF-8 for a pgml statement: 22021 at Bind (no
    BindComplete), and the prepared statement still serves a good Bind afterwards."""
    bad = rc.bind("", BIND_STATEMENT, [b"caf\xc3\x28"]) + rc.execute() + rc.sync()
    good = rc.bind("", BIND_STATEMENT, [b"cafe"]) + rc.execute() + rc.sync()
    reply = same_as_twin(
        stack, (bad, good), (bad, good), setup=PREPARE_PGML, twin_setup=PREPARE_TWIN
    )
    assert reply.codes == ["22021"]
    no_traceback(stack)


# --- Bind messages that run past their end --------------------------------------------


def _bind_body(params: bytes, count: int = 1) -> bytes:
    """A Bind of ``BIND_STATEMENT`` with no format codes, ``count`` parameters, then
    ``params`` as they are (nothing after them unless ``params`` has it)."""
    return rc.cstr("") + rc.cstr(BIND_STATEMENT) + b"\x00\x00" + struct.pack("!H", count) + params


BAD_BINDS = {
    "value-past-end": _bind_body(struct.pack("!I", 100) + b"ab"),
    "negative-length": _bind_body(struct.pack("!i", -5) + b"\x00\x00"),
    "count-past-end": _bind_body(struct.pack("!I", 2) + b"ab", count=3),
    "formats-past-end": rc.cstr("") + rc.cstr(BIND_STATEMENT) + b"\x00\x05\x00\x00",
    "no-result-formats": _bind_body(struct.pack("!I", 2) + b"ab"),
}


@pytest.mark.parametrize("bind", sorted(BAD_BINDS))
def test_bind_past_end_on_pgml_statement(stack: Stack, bind: str) -> None:
    """08P01 as an ERROR ("insufficient data left in message", or the parameter count):
    the session and the named statement go on, as PostgreSQL's do."""
    bad = rc.msg(b"B", BAD_BINDS[bind]) + rc.execute() + rc.sync()
    good = rc.bind("", BIND_STATEMENT, [b"after"]) + rc.execute() + rc.sync()
    reply = same_as_twin(
        stack, (bad, good), (bad, good), setup=PREPARE_PGML, twin_setup=PREPARE_TWIN
    )
    assert reply.codes == ["08P01"] and not reply.closed
    no_traceback(stack)


# --- deep nesting and long expressions ------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        rc.query("SELECT pgml.version(), " + nested(20_000)),
        rc.query(f"SELECT pgml.embed('{MODEL}', " + nested(20_000, "'x'") + ")"),
        rc.query("SELECT " + nested(20_000, "pgml.version()")),
        rc.parse("", "SELECT pgml.version(), " + nested(20_000)) + rc.sync(),
        rc.query("SELECT 1; SELECT pgml.version(), " + nested(20_000)),
    ],
    ids=["select-list", "embed-argument", "around-the-call", "parse", "second-statement"],
)
def test_nesting_postgresql_refuses(stack: Stack, message: bytes) -> None:
    """PostgreSQL's parser refuses 20,000 levels (42601 "memory exhausted" with its
    position) and the session goes on; the proxy must say the same, not drop the client."""
    assert same_bytes(stack, message).codes == ["42601"]
    assert stack.proxy_alive()


def test_nesting_refused_inside_transaction(stack: Stack) -> None:
    deep = rc.query("SELECT pgml.version(), " + nested(20_000))
    assert same_bytes(stack, deep, setup=rc.query("BEGIN")).codes == ["42601", "25P02"]


@pytest.mark.parametrize("depth", [1000, 2000])
def test_nesting_postgresql_accepts_is_answered(stack: Stack, depth: int) -> None:
    """Depths PostgreSQL accepts are answered, with the right values."""
    with psycopg.connect(stack.cluster.dsn(), autocommit=True) as direct:
        assert direct.execute(f"SELECT 'x' AS v, {nested(depth)} AS n").fetchone() == ("x", 1)
    with psycopg.connect(stack.proxy.dsn(), autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(f"SELECT pgml.version() AS v, {nested(depth)} AS n").fetchone()
        assert row == (__version__, 1)
        inner = conn.execute(f"SELECT {nested(depth, 'pgml.version()')}").fetchone()
        assert inner == (__version__,)


def test_nesting_deeper_than_the_proxy_reads_is_its_54001(stack: Stack) -> None:
    """Between the proxy's limit (about 2,000 levels) and PostgreSQL's (about 9,990), the
    proxy refuses with PostgreSQL's code for a stack limit, and nothing runs."""
    with psycopg.connect(stack.cluster.dsn(), autocommit=True) as direct:
        assert direct.execute(f"SELECT {nested(5000)}").fetchone() == (1,)
    with psycopg.connect(stack.proxy.dsn(), autocommit=True, connect_timeout=5) as conn:
        with pytest.raises(psycopg.errors.StatementTooComplex) as raised:
            conn.execute(f"SELECT pgml.version(), {nested(5000)}")
        assert "2,000 levels" in (raised.value.diag.message_detail or "")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_long_expression_is_54001(stack: Stack) -> None:
    """A 50,000-term sum: PostgreSQL's 54001 (stack depth limit exceeded), session kept."""
    chain = "+".join(["1"] * 50_000)
    reply = same_as_twin(
        stack,
        (rc.query(f"SELECT pgml.version(), {chain}"),),
        (rc.query(f"{VERSION_TWIN}, {chain}"),),
    )
    assert reply.codes == ["54001"]
    with psycopg.connect(stack.proxy.dsn(), autocommit=True, connect_timeout=5) as conn:
        with pytest.raises(psycopg.errors.StatementTooComplex):
            conn.execute(f"SELECT pgml.version(), {chain}")
        assert conn.execute("SELECT 1").fetchone() == (1,)


# --- huge declared lengths --------------------------------------------------------------

PGML_QUERY = rc.query("SELECT pgml.version()")
PLAIN_QUERY = rc.query(VERSION_TWIN)


@pytest.mark.parametrize("length", [2**30, 2**31, 2**32 - 1], ids=["2^30", "2^31", "2^32-1"])
def test_huge_length_after_pgml_statement(stack: Stack, length: int) -> None:
    """A Query declaring more than PostgreSQL's 1 GB limit, after a pgml statement:
    PostgreSQL closes without a word (it only logs it), and its backend ends."""
    huge = b"Q" + struct.pack("!I", length) + b"SELECT 1\x00"
    reply = same_as_twin(stack, (huge,), (huge,), setup=PGML_QUERY, twin_setup=PLAIN_QUERY)
    assert reply.closed and not reply.frames
    client, pid = raw_session(stack.proxy.port)
    with client:
        client.send(PGML_QUERY)
        client.read_until_ready()
        client.send(huge)
        assert client.read_to_eof(timeout=5) == b""
    assert backend_gone(stack, pid), f"backend {pid} outlived the connection"


@pytest.mark.parametrize(
    "tail",
    [
        b"E" + struct.pack("!I", 2**31) + b"\x00",
        b"S" + struct.pack("!I", 10_001),
        b"E" + struct.pack("!I", 20_000) + bytes(16),
    ],
    ids=["execute-2^31", "sync-10001", "execute-20000"],
)
def test_huge_length_mid_takeover(stack: Stack, tail: bytes) -> None:
    """In the middle of a pgml extended-protocol batch; PostgreSQL's limit for Sync,
    Execute, Describe, Close and Flush is 10,000 bytes.  The connection and its backend end."""
    batch = rc.parse("", "SELECT pgml.version()") + rc.bind("", "")
    twin = rc.parse("", VERSION_TWIN) + rc.bind("", "")
    assert same_as_twin(stack, (batch + tail,), (twin + tail,)).closed
    client, pid = raw_session(stack.proxy.port)
    with client:
        client.send(batch + tail)
        client.read_to_eof(timeout=5)
    assert backend_gone(stack, pid), f"backend {pid} outlived the connection"


def test_large_pgml_statement_within_limit(stack: Stack) -> None:
    """8 MB is far below PostgreSQL's 1 GB message limit: answered like any statement."""
    size = 8 << 20
    with psycopg.connect(stack.proxy.dsn(), autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(f"SELECT pgml.version() IS NOT NULL, length('{'x' * size}')").fetchone()
    assert row == (True, size)


# --- unknown message types ----------------------------------------------------------------


def test_unknown_type_after_pgml_statement(stack: Stack) -> None:
    """FATAL 08P01 "invalid frontend message type 122", then the connection closes."""
    unknown = rc.msg(b"z", b"abc")
    reply = same_as_twin(stack, (unknown,), (unknown,), setup=PGML_QUERY, twin_setup=PLAIN_QUERY)
    assert reply.closed and reply.codes == ["08P01"]


def test_unknown_type_mid_takeover(stack: Stack) -> None:
    unknown = rc.msg(b"z", b"abc")
    batch = rc.parse("", "SELECT pgml.version()") + rc.bind("", "") + rc.execute()
    twin = rc.parse("", VERSION_TWIN) + rc.bind("", "") + rc.execute()
    assert same_as_twin(stack, (batch + unknown,), (twin + unknown,)).closed
    client, pid = raw_session(stack.proxy.port)
    with client:
        client.send(batch + unknown)
        client.read_to_eof(timeout=5)
    assert backend_gone(stack, pid), f"backend {pid} outlived the connection"


def test_unknown_type_while_pgml_statement_runs(stack: Stack) -> None:
    """Sent right behind a per-row pgml statement: the statement's whole answer first
    (PostgreSQL reads the next message only when it is done), then the FATAL."""
    client, pid = raw_session(stack.proxy.port)
    with client:
        client.send(
            rc.query(f"SELECT id, pgml.embed('{MODEL}', body) FROM {stack.table} ORDER BY id"),
            rc.msg(b"z", b"abc"),
        )
        data = client.read_to_eof(timeout=30)
    frames = normalize(data)
    kinds = b"".join(f[:1] for f in frames)
    assert kinds == b"T" + b"D" * 20 + b"CZE", kinds
    fatal = rc.error_fields(frames[-1][5:])
    assert (fatal["S"], fatal["C"], fatal["M"]) == (
        "FATAL",
        "08P01",
        "invalid frontend message type 122",
    )
    assert backend_gone(stack, pid)
    assert not wait_for_backends(stack.cluster, 2.0, APPLICATION)


# --- PostgreSQL's own internal errors ---------------------------------------------------


def test_query_inside_an_extended_batch_gets_postgresqls_own_answer(stack: Stack) -> None:
    """A Query between an Execute and its Sync, then BEGIN: PostgreSQL 18 answers the
    BEGIN with an XX000 of its own (xact.c); through the proxy the client gets the same
    bytes, whether or not the batch calls a pgml function."""

    def batch(select: str) -> tuple[bytes, ...]:
        return (
            rc.parse("", select)
            + rc.bind("", "")
            + rc.execute()
            + rc.query("SELECT 1")
            + rc.sync()
            + rc.query("BEGIN")
            + rc.query("SELECT 2"),
        )

    reply = same_as_twin(
        stack,
        batch("SELECT pgml.version() AS v"),
        batch(f"SELECT '{__version__}'::text AS v"),
    )
    assert reply.codes[0] == "XX000"
    no_traceback(stack)
