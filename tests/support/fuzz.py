"""A seeded generator of frontend traffic for the fuzz test, its benchmark and the
differential tests of bad input.

Each case is what one client sends on one connection: valid simple and extended protocol,
COPY and transactions, with and without pgml calls, then (for most cases) mutated the way
careless or hostile clients mutate traffic: flipped bits, wrong or huge declared lengths,
truncation, unknown message types, invalid UTF-8, deep nesting, very long statements,
messages dropped or swapped.  Besides the random draws there are two named catalogues,
:data:`STARTUP_CASES` (the startup phase) and :data:`VIOLATIONS` (protocol errors after
login), which the differential tests replay against PostgreSQL itself.

``TrafficGenerator(seed, table).case(i)`` is a pure function of ``(seed, i)``, so any case
a run reports can be replayed alone.
"""

from __future__ import annotations

import enum
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from proxy import __version__
from tests.support import rawclient as rc

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
APPLICATION = "pgml-fuzz"
"""application_name of the fuzz sessions that log in (``pgml-fuzz:<case index>`` for the
drawn cases): how their backends are counted, and which case left one behind."""

VERSION_TWIN = f"SELECT '{__version__}'::text AS version"
"""What ``SELECT pgml.version()`` answers, as plain SQL PostgreSQL runs itself."""

PROTOCOL_3_0 = (3, 0)
_FRONTEND_TYPES = frozenset(b"QPBDECSHFXdcfp")
_UNKNOWN_TYPES = bytes(t for t in range(256) if t not in _FRONTEND_TYPES)
_BAD_UTF8 = (b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80")
_HUGE_LENGTHS = (2**30 - 1, 2**30, 2**31, 2**32 - 1, 100_000_000, 10_001)


class Ending(enum.Enum):
    """How the client leaves once it has sent its case."""

    TERMINATE = "terminate"
    """Read the replies, send Terminate, close."""
    CLOSE = "close"
    """Read the replies, close the socket (FIN) without Terminate."""
    RESET = "reset"
    """Read the replies, reset the connection (RST)."""
    VANISH = "vanish"
    """Close (FIN) at once after sending, without reading anything."""
    VANISH_RESET = "vanish-reset"
    """Reset (RST) at once after sending, without reading anything."""


@dataclass(frozen=True)
class Case:
    """One connection's traffic.  ``steps`` are sent in order, the replies to each read
    (until quiet) before the next; with ``login`` a normal startup comes first."""

    name: str
    login: bool
    steps: tuple[bytes, ...]
    ending: Ending = Ending.TERMINATE
    chunk_sizes: tuple[int, ...] = ()
    """Sizes of the writes the data is cut into (cycled); empty: one write per step."""

    @property
    def index(self) -> int:
        """The case's number in its generator (the start of its name)."""
        return int(self.name.split(":", 1)[0])

    @property
    def size(self) -> int:
        return sum(len(step) for step in self.steps)


def login_packet(application: str = APPLICATION) -> bytes:
    return rc.startup_message(
        {"user": "postgres", "database": "postgres", "application_name": application},
        PROTOCOL_3_0,
    )


def _packet(body: bytes) -> bytes:
    """A startup-phase packet: int32 length (self-inclusive), then ``body``."""
    return struct.pack("!I", len(body) + 4) + body


def _startup_body(raw_params: bytes, version: int = 196608) -> bytes:
    return _packet(struct.pack("!I", version) + raw_params)


# --- the startup phase ---------------------------------------------------------------


def _startup_cases() -> dict[str, tuple[bytes, ...]]:
    ssl, gss = rc.ssl_request(), rc.gssenc_request()
    user = {"user": "postgres", "database": "postgres"}
    cases: dict[str, tuple[bytes, ...]] = {
        "connect-and-close": (),
        "terminate-before-startup": (rc.terminate(),),
        "length-0": (struct.pack("!I", 0),),
        "length-4": (struct.pack("!I", 4),),
        "length-7": (struct.pack("!I", 7) + b"\x00\x03\x00",),
        "length-2^31": (struct.pack("!I", 2**31) + login_packet()[4:],),
        "length-10004": (struct.pack("!I", 10_004) + bytes(10_000),),
        "length-10005": (struct.pack("!I", 10_005) + bytes(10_001),),
        "length-longer-than-sent": (struct.pack("!I", 200) + login_packet()[4:],),
        "garbage": (random.Random(8).randbytes(200),),
        "password-before-startup": (rc.password_message(b"secret\x00"),),
        "query-before-startup": (rc.query("SELECT 1"),),
        "ssl-then-plaintext": (ssl + login_packet(),),
        "ssl-length-12": (struct.pack("!III", 12, rc.SSL_REQUEST_CODE, 0),),
        "gssenc-length-12": (struct.pack("!III", 12, rc.GSSENC_REQUEST_CODE, 0),),
        "gssenc-then-plaintext": (gss + login_packet(),),
        "ssl-twice": (ssl, ssl),
        "gssenc-then-ssl": (gss, ssl),
        "ssl-then-gssenc": (ssl, gss),
        "ssl-then-startup": (ssl, login_packet()),
        "ssl-then-terminate": (ssl, rc.terminate()),
        "cancel-length-12": (struct.pack("!III", 12, rc.CANCEL_REQUEST_CODE, 1),),
        "cancel-secret-3-bytes": (rc.cancel_request(1, b"abc"),),
        "cancel-unknown-key": (rc.cancel_request(1, b"abcd"),),
        "cancel-secret-256-bytes": (rc.cancel_request(1, bytes(256)),),
        "cancel-secret-257-bytes": (rc.cancel_request(1, bytes(257)),),
        "protocol-0.0": (_packet(struct.pack("!I", 0)),),
        "protocol-1.0": (rc.startup_message(user, (1, 0)),),
        "protocol-2.0": (rc.startup_message(user, (2, 0)),),
        "protocol-3.1": (rc.startup_message(user, (3, 1)),),
        "protocol-3.99": (rc.startup_message(user, (3, 99)),),
        "protocol-4.0": (rc.startup_message(user, (4, 0)),),
        "protocol-65535.65535": (rc.startup_message(user, (65535, 65535)),),
        "no-user": (rc.startup_message({"database": "postgres"}),),
        "empty-parameters": (_startup_body(b"\x00"),),
        "no-terminator": (_startup_body(b"user\x00postgres\x00"),),
        "parameter-without-value": (_startup_body(b"user\x00postgres\x00database\x00\x00"),),
        "unterminated-name": (_startup_body(b"user"),),
        "invalid-utf8-user": (_startup_body(b"user\x00\xff\xfe\x00\x00"),),
        "invalid-utf8-name": (_startup_body(b"us\xffer\x00postgres\x00\x00"),),
        "invalid-utf8-value": (
            _startup_body(b"user\x00postgres\x00application_name\x00\xc3\x28\x00\x00"),
        ),
        "unknown-user": (rc.startup_message({"user": "fuzz_no_such_role"}),),
        "unknown-database": (rc.startup_message({"user": "postgres", "database": "fuzz_no_db"}),),
        "bad-setting": (rc.startup_message({**user, "work_mem": "banana"}),),
        "unknown-setting": (rc.startup_message({**user, "fuzz.nonsense": "1"}),),
        "bad-replication-value": (rc.startup_message({**user, "replication": "banana"}),),
        "protocol-option": (rc.startup_message({**user, "_pq_.fuzz_option": "on"}),),
        "startup-then-garbage": (login_packet() + random.Random(9).randbytes(64),),
        "startup-then-unknown-type": (login_packet() + rc.msg(b"z", b"abc"),),
        "startup-then-password": (login_packet() + rc.password_message(b"secret\x00"),),
        "partial-startup": (login_packet()[:12],),
        "partial-length-word": (b"\x00\x00",),
    }
    return cases


STARTUP_CASES = _startup_cases()
"""Named startup-phase inputs: each a sequence of writes, the replies to one read before
the next is sent."""


# --- protocol errors after login -------------------------------------------------------


def _with_length(message: bytes, length: int) -> bytes:
    return message[:1] + struct.pack("!I", length) + message[5:]


def _bind_body_past_end(count: int = 1) -> bytes:
    """A Bind body whose first parameter declares 100 bytes but carries 2."""
    return b"\x00\x00" + b"\x00\x00" + struct.pack("!H", count) + struct.pack("!I", 100) + b"ab"


def nested(depth: int, inner: str = "1") -> str:
    return "(" * depth + inner + ")" * depth


@dataclass(frozen=True)
class Violation:
    """Protocol errors sent after login.  When ``twin`` is set, ``data`` calls a pgml
    function and PostgreSQL cannot run it direct: the proxy's reply to ``data`` must be
    PostgreSQL's reply to ``twin`` (the same bytes with the pgml call replaced by a plain
    expression of the same shape)."""

    data: bytes
    twin: bytes | None = None


def _violations() -> dict[str, Violation]:
    pgml_version = "SELECT pgml.version()"
    plain_version = VERSION_TWIN
    embed_param = f"SELECT pgml.embed('{MODEL}', $1::text)"
    plain_param = "SELECT $1::text"

    def both(pgml_sql: str, plain_sql: str, after: Callable[[str], bytes]) -> Violation:
        return Violation(after(pgml_sql), after(plain_sql))

    def bind_past(sql: str) -> bytes:
        return rc.parse("", sql) + rc.msg(b"B", _bind_body_past_end()) + rc.execute() + rc.sync()

    def bind_invalid_utf8(sql: str) -> bytes:
        return rc.parse("", sql) + rc.bind("", "", [b"caf\xc3\x28"]) + rc.execute() + rc.sync()

    def unknown_mid_batch(sql: str) -> bytes:
        return rc.parse("", sql) + rc.bind("", "") + rc.msg(b"z", b"abc")

    def huge_mid_batch(sql: str) -> bytes:
        return rc.parse("", sql) + rc.bind("", "") + _with_length(rc.execute(), 2**31)

    def close_mid_batch(sql: str) -> bytes:
        return rc.parse("", sql) + rc.bind("", "") + rc.execute()[:5]

    copy_in = rc.query("CREATE TEMP TABLE fuzz_copy_in (a int); COPY fuzz_copy_in FROM STDIN")

    return {
        "unknown-type": Violation(rc.msg(b"z", b"abc")),
        "type-0": Violation(rc.msg(b"\x00", b"abc")),
        "startup-after-login": Violation(login_packet()),
        "ssl-after-login": Violation(rc.ssl_request()),
        "password-after-login": Violation(rc.password_message(b"secret\x00")),
        "length-3": Violation(b"Q" + struct.pack("!I", 3)),
        "length-2^30": Violation(_with_length(rc.query("SELECT 1"), 2**30)),
        "length-2^31": Violation(_with_length(rc.query("SELECT 1"), 2**31)),
        "length-2^32-1": Violation(_with_length(rc.query("SELECT 1"), 2**32 - 1)),
        "sync-length-10001": Violation(b"S" + struct.pack("!I", 10_001) + bytes(64)),
        "execute-length-20000": Violation(b"E" + struct.pack("!I", 20_000) + bytes(64)),
        "terminate-with-body": Violation(rc.msg(b"X", b"abc")),
        "query-without-nul": Violation(rc.msg(b"Q", b"SELECT 1")),
        "query-trailing-bytes": Violation(rc.msg(b"Q", b"SELECT 1\x00junk")),
        "query-invalid-utf8": Violation(rc.msg(b"Q", b"SELECT '\xff'\x00")),
        "parse-invalid-utf8": Violation(rc.msg(b"P", b"\x00SELECT '\xff'\x00\x00\x00") + rc.sync()),
        "parse-truncated-types": Violation(rc.msg(b"P", b"\x00SELECT 1\x00\x00\x05") + rc.sync()),
        "bind-past-end": Violation(bind_past(plain_param)),
        "bind-negative-length": Violation(
            rc.parse("", plain_param)
            + rc.msg(b"B", b"\x00\x00\x00\x00\x00\x01" + struct.pack("!i", -5) + b"\x00\x00")
            + rc.sync()
        ),
        "bind-format-count": Violation(
            rc.parse("", plain_param) + rc.bind("", "", [b"a"], [0, 0]) + rc.sync()
        ),
        "bind-parameter-count": Violation(
            rc.parse("", plain_param) + rc.bind("", "", [b"a", b"b"]) + rc.sync()
        ),
        "bind-invalid-utf8": Violation(bind_invalid_utf8(plain_param)),
        "bind-unknown-statement": Violation(rc.bind("", "fuzz_none") + rc.sync()),
        "describe-bad-kind": Violation(rc.msg(b"D", b"Zx\x00") + rc.sync()),
        "close-bad-kind": Violation(rc.msg(b"C", b"Zx\x00") + rc.sync()),
        "execute-unknown-portal": Violation(rc.execute("fuzz_none") + rc.sync()),
        "copy-messages-outside-copy": Violation(
            rc.copy_data(b"x") + rc.copy_done() + rc.copy_fail("x") + rc.query("SELECT 1")
        ),
        "function-call-unknown-oid": Violation(rc.msg(b"F", b"\x00\x00\x00\x01")),
        "unknown-type-mid-batch": Violation(unknown_mid_batch("SELECT 1")),
        "huge-length-mid-batch": Violation(huge_mid_batch("SELECT 1")),
        "truncated-mid-batch": Violation(close_mid_batch("SELECT 1")),
        "unknown-type-during-copy": Violation(copy_in + rc.msg(b"z", b"abc")),
        "query-during-copy": Violation(copy_in + rc.query("SELECT 1")),
        "parse-during-copy": Violation(copy_in + rc.parse("", "SELECT 1") + rc.sync()),
        "sync-during-copy": Violation(
            copy_in + rc.sync() + rc.flush() + rc.copy_data(b"1\n") + rc.copy_done()
        ),
        "copy-data-length-2^31": Violation(copy_in + _with_length(rc.copy_data(b"1\n"), 2**31)),
        "copy-done-length-10001": Violation(copy_in + b"c" + struct.pack("!I", 10_001)),
        "nesting-20000": Violation(rc.query("SELECT " + nested(20_000))),
        "plus-chain-50000": Violation(rc.query("SELECT " + "+".join(["1"] * 50_000))),
        # The same mistakes in statements that call pgml functions.
        "pgml-query-invalid-utf8": Violation(rc.msg(b"Q", b"SELECT pgml.version(), '\xff'\x00")),
        "pgml-embed-invalid-utf8": Violation(
            rc.msg(b"Q", b"SELECT pgml.embed('" + MODEL.encode() + b"', 'caf\xc3\x28')\x00")
        ),
        "pgml-parse-invalid-utf8": Violation(
            rc.msg(b"P", b"\x00SELECT pgml.version(), '\xff'\x00\x00\x00") + rc.sync()
        ),
        "pgml-query-without-nul": Violation(
            rc.msg(b"Q", b"SELECT pgml.version()"), rc.msg(b"Q", VERSION_TWIN.encode())
        ),
        "pgml-query-trailing-bytes": Violation(
            rc.msg(b"Q", b"SELECT pgml.version()\x00junk"),
            rc.msg(b"Q", VERSION_TWIN.encode() + b"\x00junk"),
        ),
        "pgml-bind-past-end": both(embed_param, plain_param, bind_past),
        "pgml-bind-invalid-utf8": both(embed_param, plain_param, bind_invalid_utf8),
        "pgml-unknown-type-mid-batch": both(pgml_version, plain_version, unknown_mid_batch),
        "pgml-huge-length-mid-batch": both(pgml_version, plain_version, huge_mid_batch),
        "pgml-truncated-mid-batch": both(pgml_version, plain_version, close_mid_batch),
        "pgml-nesting-20000": Violation(rc.query("SELECT pgml.version(), " + nested(20_000))),
        "pgml-parse-nesting-20000": Violation(
            rc.parse("", "SELECT pgml.version(), " + nested(20_000)) + rc.sync()
        ),
        "pgml-plus-chain-50000": Violation(
            rc.query("SELECT pgml.version(), " + "+".join(["1"] * 50_000)),
            rc.query(VERSION_TWIN + ", " + "+".join(["1"] * 50_000)),
        ),
    }


VIOLATIONS = _violations()
"""Named protocol errors after login, for the fuzz draws and the differential test."""


# --- valid traffic ------------------------------------------------------------------------


@dataclass
class _Draw:
    """The messages of one case as they are built and mutated."""

    messages: list[bytes]
    parts: list[str] = field(default_factory=list)


def _text(rng: random.Random) -> str:
    words = ("proxy", "model", "embedding", "row", "café", "日本語", "it's", "SQL", "vector")
    return " ".join(rng.choice(words) for _ in range(rng.randint(1, 8))).replace("'", "''")


class TrafficGenerator:
    """Draws :class:`Case` objects; ``table`` is a readable table ``(id int, body text)``.

    ``scale`` shrinks the heavy inputs (long statements, nesting, many calls) for short
    runs: 1.0 is the full size the issue names (8 MB, 20,000 levels, 3,000 calls).
    """

    def __init__(self, seed: int, table: str, scale: float = 1.0) -> None:
        self.seed = seed
        self.table = table
        self.scale = scale

    def case(self, index: int) -> Case:
        rng = random.Random(f"{self.seed}:{index}")
        kind = rng.choices(("startup", "violation", "valid", "mutated"), (8, 12, 20, 60))[0]
        ending = rng.choices(tuple(Ending), (40, 25, 15, 10, 10))[0]
        chunks = tuple(rng.choice((1, 3, 7, 64, 1500, 65536)) for _ in range(3))
        if rng.random() < 0.7:
            chunks = ()
        if kind == "startup":
            name = rng.choice(sorted(STARTUP_CASES))
            steps = STARTUP_CASES[name]
            if steps and rng.random() < 0.4:
                steps = (_flip_bits(rng, b"".join(steps)),)
                name += "+flip-bits"
            return Case(f"{index}:startup/{name}", False, steps, ending, chunks)
        if kind == "violation":
            name = rng.choice(sorted(VIOLATIONS))
            prefix = self._valid(rng) if rng.random() < 0.5 else _Draw([], [])
            data = b"".join(prefix.messages) + VIOLATIONS[name].data
            label = "+".join([*prefix.parts, name])
            return Case(f"{index}:violation/{label}", True, (data,), ending, chunks)
        draw = self._valid(rng)
        if kind == "mutated":
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                mutation = rng.choice(self._mutations)
                mutation(self, rng, draw)
        label = "+".join(draw.parts)
        return Case(f"{index}:{kind}/{label}", True, (b"".join(draw.messages),), ending, chunks)

    # --- valid traffic --------------------------------------------------------------

    def _valid(self, rng: random.Random) -> _Draw:
        draw = _Draw([])
        for _ in range(rng.choice((1, 1, 2, 3))):
            builder = rng.choice(self._builders)
            name, messages = builder(self, rng)
            draw.messages += messages
            draw.parts.append(name)
        return draw

    def _simple_plain(self, rng: random.Random) -> tuple[str, list[bytes]]:
        n = rng.randint(1, 50)
        sql = rng.choice(
            (
                "SELECT 1",
                f"SELECT g, md5(g::text) FROM generate_series(1, {n}) g",
                f"SELECT * FROM {self.table} WHERE id <= {n} ORDER BY id",
                "SELEC 1",
                "SELECT 1/0",
                "SELECT 1; SELECT 'two'; VALUES (3, NULL)",
                "SET work_mem = '8MB'; SHOW work_mem",
                "",
                f"SELECT '{_text(rng)}' AS t",
            )
        )
        return "simple", [rc.query(sql)]

    def _simple_pgml(self, rng: random.Random) -> tuple[str, list[bytes]]:
        n = rng.randint(1, 20)
        sql = rng.choice(
            (
                "SELECT pgml.version()",
                f"SELECT pgml.embed('{MODEL}', '{_text(rng)}') AS e",
                f"SELECT id, pgml.embed('{MODEL}', body) FROM {self.table}"
                f" WHERE id <= {n} ORDER BY id",
                f"SELECT count(*) FROM {self.table} WHERE id <= {n}"
                f" AND array_length(pgml.embed('{MODEL}', body), 1) = 384",
                f"SELECT pgml.version(), 1; SELECT id FROM {self.table} WHERE id = {n}",
                "SELECT pgml.embed('fuzz/no-such-model', 'x')",
                "SELECT pgml.no_such_function()",
                "SELECT pgml.version(), 1/0",
            )
        )
        return "simple-pgml", [rc.query(sql)]

    def _extended_plain(self, rng: random.Random) -> tuple[str, list[bytes]]:
        n = rng.randint(1, 30)
        name = rng.choice(("", "fuzz_stmt"))
        messages = [
            rc.parse(name, "SELECT g, $1::text FROM generate_series(1, $2::int) g", [25, 23]),
            rc.describe(b"S", name),
            rc.bind("", name, [_text(rng).encode(), str(n).encode()], [], [rng.choice((0, 1))]),
            rc.describe(b"P"),
            rc.execute("", rng.choice((0, 0, 5))),
        ]
        if name:
            messages.append(rc.close(b"S", name))
        messages.append(rng.choice((rc.sync(), rc.sync(), rc.flush() + rc.sync())))
        return "extended", messages

    def _extended_pgml(self, rng: random.Random) -> tuple[str, list[bytes]]:
        n = rng.randint(1, 20)
        choice = rng.randrange(3)
        if choice == 0:
            messages = [
                rc.parse("", "SELECT pgml.embed($1, $2)"),
                rc.bind("", "", [MODEL.encode(), _text(rng).encode()]),
                rc.describe(b"P"),
                rc.execute(),
                rc.sync(),
            ]
        elif choice == 1:
            sql = f"SELECT id, pgml.embed($1, body) FROM {self.table} WHERE id <= $2 ORDER BY id"
            messages = [
                rc.parse("fuzz_rows", sql, [25, 23]),
                rc.describe(b"S", "fuzz_rows"),
                rc.bind("", "fuzz_rows", [MODEL.encode(), struct.pack("!i", n)], [0, 1], [1]),
                rc.execute(),
                rc.close(b"S", "fuzz_rows"),
                rc.sync(),
            ]
        else:
            messages = [
                rc.parse("", "SELECT pgml.version()"),
                rc.bind("", ""),
                rc.execute(),
                rc.parse("", "SELECT 1"),
                rc.bind("", ""),
                rc.execute(),
                rc.sync(),
            ]
        return "extended-pgml", messages

    def _copy(self, rng: random.Random) -> tuple[str, list[bytes]]:
        rows = b"".join(b"%d\t%s\n" % (i, _text(rng).encode()) for i in range(rng.randint(1, 40)))
        cut = rng.randint(0, len(rows))
        end = rng.choice((rc.copy_done(), rc.copy_done(), rc.copy_fail("fuzz gave up")))
        return "copy", [
            rc.query("CREATE TEMP TABLE IF NOT EXISTS fuzz_copy (a int, b text)"),
            rc.query("COPY fuzz_copy FROM STDIN"),
            rc.copy_data(rows[:cut]),
            rc.copy_data(rows[cut:]),
            end,
        ]

    def _transaction(self, rng: random.Random) -> tuple[str, list[bytes]]:
        body = rng.choice(
            (
                f"SELECT count(*) FROM {self.table}",
                "CREATE TEMP TABLE fuzz_tx (a int); INSERT INTO fuzz_tx VALUES (1)",
                f"SELECT pgml.embed('{MODEL}', body) FROM {self.table} WHERE id = 1",
                "SELECT 1/0",
            )
        )
        end = rng.choice(("COMMIT", "ROLLBACK", None))
        messages = [rc.query("BEGIN"), rc.query(body)]
        if end is not None:
            messages.append(rc.query(end))
        return "transaction", messages

    _builders: Sequence[Callable[[TrafficGenerator, random.Random], tuple[str, list[bytes]]]] = (
        _simple_plain,
        _simple_pgml,
        _simple_pgml,
        _extended_plain,
        _extended_pgml,
        _extended_pgml,
        _copy,
        _transaction,
    )

    # --- mutations ------------------------------------------------------------------

    def _flip(self, rng: random.Random, draw: _Draw) -> None:
        draw.messages = [_flip_bits(rng, b"".join(draw.messages))]
        draw.parts.append("flip-bits")

    def _wrong_length(self, rng: random.Random, draw: _Draw) -> None:
        i = rng.randrange(len(draw.messages))
        message = draw.messages[i]
        if len(message) < 5:
            return
        length = struct.unpack_from("!I", message, 1)[0]
        wrong = min(max(0, length + rng.choice((-5, -2, -1, 1, 2, 7))), 2**32 - 1)
        draw.messages[i] = _with_length(message, wrong)
        draw.parts.append("wrong-length")

    def _huge_length(self, rng: random.Random, draw: _Draw) -> None:
        i = rng.randrange(len(draw.messages))
        if len(draw.messages[i]) >= 5:
            draw.messages[i] = _with_length(draw.messages[i], rng.choice(_HUGE_LENGTHS))
            draw.parts.append("huge-length")

    def _truncate(self, rng: random.Random, draw: _Draw) -> None:
        data = b"".join(draw.messages)
        draw.messages = [data[: rng.randrange(len(data))]] if data else []
        draw.parts.append("truncate")

    def _unknown_type(self, rng: random.Random, draw: _Draw) -> None:
        mtype = bytes([rng.choice(_UNKNOWN_TYPES)])
        draw.messages.insert(rng.randint(0, len(draw.messages)), rc.msg(mtype, rng.randbytes(8)))
        draw.parts.append("unknown-type")

    def _invalid_utf8(self, rng: random.Random, draw: _Draw) -> None:
        texts = [i for i, m in enumerate(draw.messages) if m[:1] in (b"Q", b"P") and len(m) > 6]
        if not texts:
            return
        i = rng.choice(texts)
        message = draw.messages[i]
        start = 5 if message[:1] == b"Q" else message.find(b"\x00", 5) + 1 or 5
        end = message.find(b"\x00", start)
        at = rng.randint(start, len(message) if end < 0 else end)
        body = message[5:at] + rng.choice(_BAD_UTF8) + message[at:]
        draw.messages[i] = rc.msg(message[:1], body)
        draw.parts.append("invalid-utf8")

    def _deep_nesting(self, rng: random.Random, draw: _Draw) -> None:
        depth = max(10, int(rng.choice((100, 1000, 3000, 20_000)) * self.scale))
        inner = rng.choice(("1", "pgml.version()", f"pgml.embed('{MODEL}', 'x') IS NULL"))
        sql = f"SELECT {nested(depth, inner)}"
        if rng.random() < 0.5:
            sql = f"SELECT pgml.version(), {nested(depth)}"
        draw.messages.insert(rng.randint(0, len(draw.messages)), rc.query(sql))
        draw.parts.append(f"nesting-{depth}")

    def _long_statement(self, rng: random.Random, draw: _Draw) -> None:
        size = max(1024, int(rng.choice((64 << 10, 1 << 20, 8 << 20)) * self.scale))
        head = rng.choice(("SELECT pgml.version(), length('", "SELECT length('"))
        sql = head + "x" * size + "')"
        draw.messages.insert(rng.randint(0, len(draw.messages)), rc.query(sql))
        draw.parts.append(f"long-{size}")

    def _many_calls(self, rng: random.Random, draw: _Draw) -> None:
        count = max(2, int(3000 * self.scale * rng.random()))
        sql = "SELECT array_length(ARRAY[" + ", ".join(["pgml.version()"] * count) + "], 1)"
        draw.messages.insert(rng.randint(0, len(draw.messages)), rc.query(sql))
        draw.parts.append(f"calls-{count}")

    def _drop(self, rng: random.Random, draw: _Draw) -> None:
        if len(draw.messages) > 1:
            del draw.messages[rng.randrange(len(draw.messages))]
            draw.parts.append("drop-message")

    def _swap(self, rng: random.Random, draw: _Draw) -> None:
        if len(draw.messages) > 1:
            i, j = rng.sample(range(len(draw.messages)), 2)
            draw.messages[i], draw.messages[j] = draw.messages[j], draw.messages[i]
            draw.parts.append("swap-messages")

    _mutations: Sequence[Callable[[TrafficGenerator, random.Random, _Draw], None]] = (
        _flip,
        _flip,
        _wrong_length,
        _huge_length,
        _truncate,
        _truncate,
        _unknown_type,
        _invalid_utf8,
        _invalid_utf8,
        _deep_nesting,
        _long_statement,
        _many_calls,
        _drop,
        _swap,
    )


def _flip_bits(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    flipped = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
    return bytes(flipped)
