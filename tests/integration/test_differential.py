"""Differential tests: the same bytes sent direct and through the proxy get the same reply.

Each test opens one raw connection to the cluster and one to the proxy, sends both the
same frontend messages and compares the backend messages byte for byte.  The only thing
normalized is BackendKeyData (pid and secret), which names a different backend per
connection and whose secret the proxy replaces.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support import rawclient as rc
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess
from tests.support.rawclient import Message, RawClient


def normalize(messages: list[Message]) -> list[bytes]:
    """Raw bytes of each message, with BackendKeyData's pid and secret zeroed."""
    return [rc.msg(b"K", bytes(len(m.body))) if m.type == b"K" else m.raw for m in messages]


def types(messages: list[Message]) -> bytes:
    return b"".join(m.type for m in messages)


@dataclass
class Pair:
    """One raw connection straight to the cluster and one through the proxy."""

    direct: RawClient
    proxied: RawClient
    direct_startup: list[Message]
    proxied_startup: list[Message]

    def send(self, *chunks: bytes) -> None:
        self.direct.send(*chunks)
        self.proxied.send(*chunks)

    def read_until(self, *wanted: bytes, count: int = 1, timeout: float = 5.0) -> list[Message]:
        """Read from both up to the ``count``-th message of a wanted type; assert equality."""
        direct = self.direct.read_until(wanted, count, timeout)
        proxied = self.proxied.read_until(wanted, count, timeout)
        assert normalize(proxied) == normalize(direct)
        return direct

    def exchange(self, *chunks: bytes, ready: int = 1) -> list[Message]:
        """Send the same bytes to both and compare everything through ``ready`` ReadyForQuery."""
        self.send(*chunks)
        return self.read_until(b"Z", count=ready)


def open_pair(
    cluster: PostgresCluster, proxy: ProxyProcess, version: tuple[int, int] = (3, 0)
) -> Pair:
    direct = RawClient.connect(cluster.host, cluster.port)
    proxied = RawClient.connect("127.0.0.1", proxy.port)
    params = {"application_name": "differential", "client_encoding": "UTF8"}
    return Pair(
        direct,
        proxied,
        direct.startup("postgres", version=version, **params),
        proxied.startup("postgres", version=version, **params),
    )


@pytest.fixture
def pair(cluster: PostgresCluster, proxy: ProxyProcess) -> Iterator[Pair]:
    connections = open_pair(cluster, proxy)
    yield connections
    for client in (connections.direct, connections.proxied):
        client.send(rc.terminate())
        client.close()


@pytest.fixture(scope="module")
def table(cluster: PostgresCluster) -> Iterator[str]:
    """A shared read-only table, so RowDescription carries the same table OID both ways."""
    name = f"diff_{uuid.uuid4().hex[:12]}"
    cluster.psql(
        f"CREATE TABLE {name} (id int PRIMARY KEY, label text, amount numeric(10,2));"
        f"INSERT INTO {name} SELECT g, 'row ' || g, g * 1.5 FROM generate_series(1, 50) g"
    )
    yield name
    cluster.psql(f"DROP TABLE {name}")


# --- startup ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [(3, 0), (3, 2)], ids=["3.0", "3.2"])
def test_startup_replies_identical(
    cluster: PostgresCluster, proxy: ProxyProcess, version: tuple[int, int]
) -> None:
    """AuthenticationOk, every ParameterStatus and ReadyForQuery match; only the key differs."""
    connections = open_pair(cluster, proxy, version)
    try:
        direct, proxied = connections.direct_startup, connections.proxied_startup
        assert normalize(proxied) == normalize(direct)
        assert direct[0].raw == rc.msg(b"R", struct.pack("!I", 0))
        assert types(direct).count(b"S") >= 10
        key = next(m for m in proxied if m.type == b"K")
        assert len(key.body) == (8 if version == (3, 0) else 36)
        connections.exchange(rc.query("SELECT 1"))
    finally:
        connections.direct.close()
        connections.proxied.close()


# --- simple query ----------------------------------------------------------------------


def test_simple_query_several_statements(pair: Pair, table: str) -> None:
    reply = pair.exchange(
        rc.query(
            "SELECT 1 AS one, 'x'::text AS letter, NULL::int AS nothing;"
            f"SELECT * FROM {table} ORDER BY id;"
            "VALUES (1, 'a'), (2, NULL);"
            "SET application_name = 'differential-2';"
            "BEGIN; SELECT now() = now(); COMMIT"
        )
    )
    assert types(reply).count(b"T") == 4
    assert types(reply).count(b"D") == 1 + 50 + 2 + 1
    assert b"S" in types(reply)
    assert reply[-1].body == b"I"


def test_pipelined_queries_in_one_write(pair: Pair, table: str) -> None:
    """Three Query messages written at once get three complete replies in order."""
    reply = pair.exchange(
        rc.query("SELECT 1"),
        rc.query(f"SELECT label FROM {table} WHERE id = 7"),
        rc.query("BEGIN"),
        ready=3,
    )
    assert [m.body for m in reply if m.type == b"Z"] == [b"I", b"I", b"T"]


def test_message_split_into_single_bytes(pair: Pair, table: str) -> None:
    """A Query delivered one byte per write is reassembled identically."""
    data = rc.query(f"SELECT id, amount FROM {table} WHERE id < 4 ORDER BY id")
    for i in range(len(data)):
        pair.send(data[i : i + 1])
    reply = pair.read_until(b"Z")
    assert types(reply) == b"TDDDCZ"


def test_large_messages_both_ways(pair: Pair) -> None:
    """A 1 MiB query text and multi-megabyte results cross many reads intact."""
    big = "y" * (1 << 20)
    reply = pair.exchange(
        rc.query(f"SELECT length('{big}'), repeat('x', 3000000)"),
        rc.query("SELECT g, repeat('z', g % 100) FROM generate_series(1, 30000) g"),
        ready=2,
    )
    assert types(reply).count(b"D") == 1 + 30000


@pytest.mark.parametrize(
    ("sql", "sqlstate", "position"),
    [
        ("SELEC 1", "42601", "1"),
        ("SELECT 1/0", "22012", None),
        ("SELECT * FROM diff_no_such_table_x7", "42P01", "15"),
        ("SELECT 1; SELECT 'a' + ; SELECT 2", "42601", "24"),
        ("SELECT 1; SELECT 1/0; SELECT 2", "22012", None),
    ],
    ids=["syntax", "division", "undefined-table", "syntax-second", "runtime-second"],
)
def test_errors_identical(pair: Pair, sql: str, sqlstate: str, position: str | None) -> None:
    reply = pair.exchange(rc.query(sql))
    error = next(m for m in reply if m.type == b"E")
    fields = rc.error_fields(error.body)
    assert fields["C"] == sqlstate
    assert fields.get("P") == position
    assert reply[-1].body == b"I"


def test_error_in_transaction_block(pair: Pair) -> None:
    """A failed transaction (25P02 for later statements) and its rollback match."""
    reply = pair.exchange(rc.query("BEGIN; SELECT 1/0"))
    assert reply[-1].body == b"E"
    reply = pair.exchange(rc.query("SELECT 1"))
    assert rc.error_fields(reply[0].body)["C"] == "25P02"
    reply = pair.exchange(rc.query("ROLLBACK"))
    assert reply[-1].body == b"I"


def test_notices_identical(pair: Pair) -> None:
    reply = pair.exchange(
        rc.query(
            "DO $$BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful' "
            "USING DETAIL = 'some detail', HINT = 'a hint'; END$$;"
            "DROP TABLE IF EXISTS diff_never_created_q3"
        )
    )
    notices = [rc.error_fields(m.body) for m in reply if m.type == b"N"]
    assert [n["V"] for n in notices] == ["NOTICE", "WARNING", "NOTICE"]
    assert notices[1]["D"] == "some detail"


def test_empty_query(pair: Pair) -> None:
    reply = pair.exchange(rc.query(""), rc.query("  ;  "), ready=2)
    assert types(reply) == b"IZIZ"
    reply = pair.exchange(rc.parse("", ""), rc.bind("", ""), rc.execute(), rc.sync())
    assert types(reply) == b"12IZ"


# --- extended protocol -----------------------------------------------------------------


def test_extended_protocol_batch(pair: Pair, table: str) -> None:
    """Unnamed and named statements, Describe, binary results, Close, then a second batch."""
    int4, text = 23, 25
    reply = pair.exchange(
        rc.parse("", "SELECT $1::int + 1 AS next, $2::text AS label", [int4, text]),
        rc.bind("", "", [b"41", b"hello"]),
        rc.describe(b"P"),
        rc.execute(),
        rc.parse("diff_stmt", f"SELECT id, label, amount FROM {table} WHERE id <= $1"),
        rc.describe(b"S", "diff_stmt"),
        rc.bind("diff_portal", "diff_stmt", [struct.pack("!i", 3)], [1], [1, 0, 1]),
        rc.describe(b"P", "diff_portal"),
        rc.execute("diff_portal"),
        rc.close(b"P", "diff_portal"),
        rc.bind("", "diff_stmt", [None]),
        rc.execute(),
        rc.sync(),
    )
    assert types(reply) == b"12TDC" + b"1tT" + b"2TDDDC3" + b"2C" + b"Z"
    reply = pair.exchange(
        rc.bind("", "diff_stmt", [b"2"]),
        rc.execute(),
        rc.close(b"S", "diff_stmt"),
        rc.describe(b"S", "diff_stmt"),
        rc.sync(),
    )
    assert types(reply) == b"2DDC3EZ"
    assert rc.error_fields(reply[-2].body)["C"] == "26000"


def test_extended_error_mid_batch_then_sync(pair: Pair) -> None:
    """After an error the rest of the batch is skipped up to Sync, identically."""
    reply = pair.exchange(
        rc.parse("", "SELECT 1"),
        rc.bind("", ""),
        rc.execute(),
        rc.parse("", "SELECT 1/$1::int"),
        rc.bind("", "", [b"0"]),
        rc.execute(),
        rc.parse("diff_never", "SELECT 2"),
        rc.bind("", "diff_never"),
        rc.execute(),
        rc.sync(),
    )
    # The unnamed statement is planned at Bind with the value, so the error comes there.
    assert types(reply) == b"12DC1EZ"
    assert rc.error_fields(reply[-2].body)["C"] == "22012"
    reply = pair.exchange(rc.parse("", "SELEC"), rc.sync(), rc.describe(b"S", "diff_never"))
    assert types(reply) == b"EZ"
    reply = pair.read_until(b"E")
    assert rc.error_fields(reply[0].body)["C"] == "26000"
    reply = pair.exchange(rc.sync())
    assert types(reply) == b"Z"


def test_flush_without_sync_gets_reply(pair: Pair) -> None:
    """Parse/Bind/Execute/Flush is answered before any Sync is sent."""
    pair.send(
        rc.parse("", "SELECT g FROM generate_series(1, 3) g"),
        rc.bind("", ""),
        rc.execute(),
        rc.flush(),
    )
    reply = pair.read_until(b"C", timeout=2.0)
    assert types(reply) == b"12DDDC"
    pair.send(rc.describe(b"S", ""), rc.flush())
    reply = pair.read_until(b"T", timeout=2.0)
    assert types(reply) == b"tT"
    reply = pair.exchange(rc.sync())
    assert types(reply) == b"Z"


def test_execute_with_row_limit(pair: Pair) -> None:
    """Execute with max_rows suspends the portal (PortalSuspended) and resumes it."""
    reply = pair.exchange(
        rc.query("BEGIN"),
        rc.parse("", "SELECT g FROM generate_series(1, 5) g"),
        rc.bind("diff_cursor", ""),
        rc.execute("diff_cursor", 2),
        rc.execute("diff_cursor", 2),
        rc.flush(),
        ready=1,
    )
    assert types(reply) == b"CZ"
    reply = pair.read_until(b"s", count=2, timeout=2.0)
    assert types(reply) == b"12DDsDDs"
    reply = pair.exchange(rc.execute("diff_cursor", 2), rc.sync())
    assert types(reply) == b"DCZ"
    reply = pair.exchange(rc.query("COMMIT"))
    assert reply[-1].body == b"I"


def test_function_call(pair: Pair, cluster: PostgresCluster) -> None:
    """FunctionCall with binary arguments, a text result, and an overflow error."""
    oid = int(cluster.psql("SELECT 'int4pl'::regproc::oid").strip())
    args = [struct.pack("!i", 2), struct.pack("!i", 3)]
    reply = pair.exchange(rc.function_call(oid, args, [1], 0))
    assert reply[0].raw == rc.msg(b"V", struct.pack("!I", 1) + b"5")
    reply = pair.exchange(rc.function_call(oid, args, [1], 1))
    assert reply[0].raw == rc.msg(b"V", struct.pack("!Ii", 4, 5))
    overflow = [struct.pack("!i", 2**31 - 1), struct.pack("!i", 1)]
    reply = pair.exchange(rc.function_call(oid, overflow, [1], 0))
    assert rc.error_fields(reply[0].body)["C"] == "22003"


# --- COPY ------------------------------------------------------------------------------


def test_copy_from_stdin(pair: Pair) -> None:
    """CopyIn, CopyData split mid-row, CopyDone; then the rows read back."""
    pair.exchange(rc.query("CREATE TEMP TABLE diff_copy_in (a int, b text)"))
    pair.send(rc.query("COPY diff_copy_in FROM STDIN"))
    reply = pair.read_until(b"G")
    assert types(reply) == b"G"
    rows = b"".join(b"%d\tvalue %d\n" % (i, i) for i in range(1000))
    pair.send(rc.copy_data(rows[:777]), rc.copy_data(rows[777:]), rc.copy_done())
    reply = pair.read_until(b"Z")
    assert reply[0].raw == rc.msg(b"C", b"COPY 1000\x00")
    reply = pair.exchange(rc.query("COPY diff_copy_in TO STDOUT"))
    assert b"".join(m.body for m in reply if m.type == b"d") == rows


def test_copy_from_stdin_errors(pair: Pair) -> None:
    """Bad data and CopyFail end the COPY with the same ErrorResponse."""
    pair.exchange(rc.query("CREATE TEMP TABLE diff_copy_bad (a int)"))
    pair.send(rc.query("COPY diff_copy_bad FROM STDIN"))
    pair.read_until(b"G")
    pair.send(rc.copy_data(b"1\n2\nnot a number\n"), rc.copy_done())
    reply = pair.read_until(b"Z")
    assert rc.error_fields(reply[0].body)["C"] == "22P02"
    pair.send(rc.query("COPY diff_copy_bad FROM STDIN"))
    pair.read_until(b"G")
    pair.send(rc.copy_data(b"1\n"), rc.copy_fail("client gave up"))
    reply = pair.read_until(b"Z")
    assert rc.error_fields(reply[0].body)["C"] == "57014"


@pytest.mark.parametrize("options", ["", "(FORMAT csv, HEADER)", "(FORMAT binary)"])
def test_copy_to_stdout(pair: Pair, table: str, options: str) -> None:
    reply = pair.exchange(rc.query(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT {options}"))
    assert types(reply)[0:1] == b"H"
    assert reply[-2].raw == rc.msg(b"C", b"COPY 50\x00")
