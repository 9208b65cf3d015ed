"""The PostgreSQL frontend/backend protocol (version 3), sans-IO.

Every message type has a name here; everything the proxy writes has one encoder here and
everything it reads one decoder.  Nothing touches a socket: bytes in, values out.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from proxy.wire import encoding

INT16 = struct.Struct("!h")
UINT16 = struct.Struct("!H")
INT32 = struct.Struct("!i")
UINT32 = struct.Struct("!I")
UINT32_PAIR = struct.Struct("!II")
HEADER = struct.Struct("!cI")
_FIELD_TAIL = struct.Struct("!IhIhih")
"""A RowDescription field after its name: table OID, column number, type OID, type size,
type modifier, format code."""

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

MAX_STARTUP_LENGTH = 10_000
"""PostgreSQL's MAX_STARTUP_PACKET_LENGTH (not counting the length word)."""
MAX_MESSAGE_LENGTH = 0x3FFF_FFFF
"""PostgreSQL's PQ_LARGE_MESSAGE_LIMIT: no single message may be longer."""
SMALL_MESSAGE_LENGTH = 10_000
"""PostgreSQL's PQ_SMALL_MESSAGE_LIMIT, for the messages that carry little."""
SMALL_MESSAGE_TYPES = frozenset(b"SHEDCXcf")
MAX_CANCEL_KEY_LENGTH = 256
"""Protocol 3.2 allows cancel keys of up to 256 bytes."""


PGML_PATTERN = re.compile(rb"[pP][gG][mM][lL]")


def mentions_pgml(data: bytes, start: int, end: int) -> bool:
    """The hot-path test of a Query or Parse: does its text contain ``pgml`` at all?
    (A long text is lowered and searched for the word: a case-blind pattern has no
    fast search, and megabytes of it would hold the event loop for milliseconds.)"""
    if end - start > _LONG_TEXT:
        return data[start:end].lower().find(b"pgml") >= 0
    return PGML_PATTERN.search(data, start, end) is not None


_LONG_TEXT = 1 << 14


class Frontend:
    """Type bytes of the messages a client sends."""

    QUERY = ord("Q")
    PARSE = ord("P")
    BIND = ord("B")
    DESCRIBE = ord("D")
    EXECUTE = ord("E")
    CLOSE = ord("C")
    SYNC = ord("S")
    FLUSH = ord("H")
    FUNCTION_CALL = ord("F")
    TERMINATE = ord("X")
    COPY_DATA = ord("d")
    COPY_DONE = ord("c")
    COPY_FAIL = ord("f")
    PASSWORD = ord("p")


class Backend:
    """Type bytes of the messages a server sends."""

    AUTHENTICATION = ord("R")
    BACKEND_KEY_DATA = ord("K")
    PARAMETER_STATUS = ord("S")
    READY_FOR_QUERY = ord("Z")
    ERROR = ord("E")
    NOTICE = ord("N")
    NOTIFICATION = ord("A")
    ROW_DESCRIPTION = ord("T")
    DATA_ROW = ord("D")
    COMMAND_COMPLETE = ord("C")
    EMPTY_QUERY = ord("I")
    PORTAL_SUSPENDED = ord("s")
    PARSE_COMPLETE = ord("1")
    BIND_COMPLETE = ord("2")
    CLOSE_COMPLETE = ord("3")
    NO_DATA = ord("n")
    PARAMETER_DESCRIPTION = ord("t")
    COPY_IN = ord("G")
    COPY_OUT = ord("H")
    COPY_BOTH = ord("W")
    COPY_DATA = ord("d")
    COPY_DONE = ord("c")
    FUNCTION_RESULT = ord("V")
    NEGOTIATE_VERSION = ord("v")


class ProtocolViolation(Exception):
    """The peer sent bytes that are not the PostgreSQL protocol (the session ends)."""


class MessageFormatError(Exception):
    """A message body that does not decode: PostgreSQL's ERROR for it (``08P01``, or
    ``22021`` for text that is not UTF-8), with its CONTEXT line where it has one."""

    def __init__(self, message: str, sqlstate: str = "08P01", context: str | None = None):
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.context = context


def invalid_encoding(raw: bytes, start: int) -> str:
    """PostgreSQL's message for bytes that are not UTF-8, naming the bad character's
    bytes as its report_invalid_encoding does."""
    first = raw[start]
    width = 2 if 0xC0 <= first < 0xE0 else 3 if 0xE0 <= first < 0xF0 else 4 if first >= 0xF0 else 1
    shown = " ".join(f"0x{b:02x}" for b in raw[start : start + width])
    return f'invalid byte sequence for encoding "UTF8": {shown}'


# --- whole messages -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One whole protocol message; ``raw`` is its exact bytes, header included."""

    type: int
    raw: bytes

    @property
    def body(self) -> bytes:
        return self.raw[5:]


def message(mtype: bytes, body: bytes = b"") -> bytes:
    return HEADER.pack(mtype, len(body) + 4) + body


def cstring(text: str) -> bytes:
    return text.encode(encoding.current()) + b"\x00"


# --- the startup phase -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """A request, on a fresh connection, to cancel another session's query."""

    pid: int
    secret: bytes

    def encode(self) -> bytes:
        head = UINT32_PAIR.pack(12 + len(self.secret), CANCEL_REQUEST_CODE)
        return head + UINT32.pack(self.pid) + self.secret


SSL_REQUEST = UINT32_PAIR.pack(8, SSL_REQUEST_CODE)
SSL_REFUSED = b"N"
SSL_ACCEPTED = b"S"


# --- errors and notices ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PgError:
    """The fields of an ErrorResponse or NoticeResponse."""

    severity: str
    code: str
    message: str
    detail: str | None = None
    hint: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def encode(self, mtype: bytes = b"E") -> bytes:
        fields = [b"S" + cstring(self.severity), b"V" + cstring(self.severity)]
        fields += [b"C" + cstring(self.code), b"M" + cstring(self.message)]
        if self.detail:
            fields.append(b"D" + cstring(self.detail))
        if self.hint:
            fields.append(b"H" + cstring(self.hint))
        fields += [k.encode("ascii") + cstring(v) for k, v in self.extra.items()]
        return message(mtype, b"".join(fields) + b"\x00")


def parse_error_fields(body: bytes) -> dict[str, str]:
    """Decode the fields of an ErrorResponse or NoticeResponse body."""
    fields: dict[str, str] = {}
    for part in body.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode(encoding.current(), "replace")
    return fields


def error_from_fields(fields: Mapping[str, str], mtype: bytes = b"E") -> bytes:
    """An ErrorResponse (or NoticeResponse) with exactly these fields, in this order."""
    body = b"".join(k.encode("ascii") + cstring(v) for k, v in fields.items())
    return message(mtype, body + b"\x00")


POSITION_FIELDS = frozenset("Pqp")
"""Error fields that point into the statement text: meaningless for rewritten SQL."""


def moved_position(error: bytes, offset: int | None) -> bytes:
    """An ErrorResponse whose position points ``offset`` characters further (a statement
    sent on its own that the client wrote inside a longer text), or, for ``None``, without
    the fields that point into the statement's text (the statement was rewritten)."""
    fields = parse_error_fields(error[5:])
    if offset is None:
        fields = {k: v for k, v in fields.items() if k not in POSITION_FIELDS}
    elif "P" in fields and offset:
        fields["P"] = str(int(fields["P"]) + offset)
    else:
        return error
    return error_from_fields(fields, error[:1])


# --- messages the proxy sends to the server ---------------------------------------------

SYNC = message(b"S")
FLUSH = message(b"H")
TERMINATE = message(b"X")
COPY_DONE = message(b"c")


def query(sql: str) -> bytes:
    return message(b"Q", cstring(sql))


def parse(name: str, sql: str, param_oids: Sequence[int] = ()) -> bytes:
    text = sql.encode(encoding.current())  # copied once more, below: statements can be megabytes
    oids = struct.pack(f"!h{len(param_oids)}I", len(param_oids), *param_oids)
    head = cstring(name)
    length = 4 + len(head) + len(text) + 1 + len(oids)
    return b"".join((HEADER.pack(b"P", length), head, text, b"\x00", oids))


def bind(
    portal: str,
    statement: str,
    params: Sequence[bytes | None] = (),
    param_formats: Sequence[int] = (),
    result_formats: Sequence[int] = (),
) -> bytes:
    parts = [cstring(portal), cstring(statement)]
    parts.append(struct.pack(f"!h{len(param_formats)}h", len(param_formats), *param_formats))
    parts.append(INT16.pack(len(params)))
    for value in params:
        parts.append(INT32.pack(-1) if value is None else INT32.pack(len(value)) + value)
    parts.append(struct.pack(f"!h{len(result_formats)}h", len(result_formats), *result_formats))
    return message(b"B", b"".join(parts))


def describe(kind: bytes, name: str) -> bytes:
    return message(b"D", kind + cstring(name))


def execute(portal: str, max_rows: int = 0) -> bytes:
    return message(b"E", cstring(portal) + INT32.pack(max_rows))


def close(kind: bytes, name: str) -> bytes:
    return message(b"C", kind + cstring(name))


def copy_data(payload: bytes) -> bytes:
    return message(b"d", payload)


def copy_fail(reason: str) -> bytes:
    return message(b"f", cstring(reason))


# --- messages the proxy sends to the client ---------------------------------------------

PARSE_COMPLETE = message(b"1")
BIND_COMPLETE = message(b"2")
CLOSE_COMPLETE = message(b"3")
NO_DATA = message(b"n")


def ready_for_query(status: bytes) -> bytes:
    return message(b"Z", status)


def backend_key_data(pid: int, secret: bytes) -> bytes:
    return message(b"K", UINT32.pack(pid) + secret)


def parameter_description(oids: Sequence[int]) -> bytes:
    return message(b"t", struct.pack(f"!h{len(oids)}I", len(oids), *oids))


def command_complete(tag: str) -> bytes:
    return message(b"C", cstring(tag))


def data_row(values: Sequence[bytes | None]) -> bytes:
    parts = [INT16.pack(len(values))]
    for value in values:
        parts.append(INT32.pack(-1) if value is None else INT32.pack(len(value)) + value)
    return message(b"D", b"".join(parts))


def row_description_with_formats(body: bytes, formats: Sequence[int]) -> bytes:
    """A RowDescription message whose columns carry the format codes a Bind asked for."""
    count = INT16.unpack_from(body)[0]
    out = bytearray(body)
    pos = 2
    for index in range(count):
        pos = out.index(b"\x00", pos) + 1 + 16
        code = formats[0] if len(formats) == 1 else (formats[index] if formats else 0)
        out[pos : pos + 2] = INT16.pack(code)
        pos += 2
    return message(b"T", bytes(out))


def column_count(body: bytes | None) -> int:
    """The columns of a RowDescription body (None: NoData, none)."""
    return 0 if body is None else INT16.unpack_from(body)[0]


def row_description_prefix(body: bytes, width: int) -> bytes:
    """A RowDescription message of the first ``width`` columns of ``body``'s."""
    pos = 2
    for _ in range(width):
        pos = body.index(b"\x00", pos) + 1 + _FIELD_TAIL.size
    return message(b"T", INT16.pack(width) + body[2:pos])


AUTH_SASL = 10
_PLUS_SUFFIX = b"-PLUS"


def without_channel_binding(reply: Message) -> bytes:
    """An AuthenticationSASL without the ``-PLUS`` mechanisms (any other message as is).

    Channel binding ties SCRAM to the TLS connection the server sees, which is the proxy's,
    not the client's: offered to a client over TLS, it could never succeed.
    """
    body = reply.body
    if len(body) < 4 or UINT32.unpack_from(body)[0] != AUTH_SASL:
        return reply.raw
    names = [n for n in body[4:].split(b"\x00") if n]
    kept = [n for n in names if not n.endswith(_PLUS_SUFFIX)]
    if len(kept) == len(names):
        return reply.raw
    return message(b"R", body[:4] + b"".join(n + b"\x00" for n in kept) + b"\x00")


# --- decoding what the server sends --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    format: int


def parse_backend_key_data(body: bytes) -> tuple[int, bytes]:
    if len(body) < 8:
        raise ProtocolViolation("invalid BackendKeyData message")
    return UINT32.unpack_from(body)[0], bytes(body[4:])


def parse_row_description(body: bytes) -> list[Column]:
    count = INT16.unpack_from(body)[0]
    columns: list[Column] = []
    pos = 2
    for _ in range(count):
        end = body.index(b"\x00", pos)
        name = body[pos:end].decode(encoding.current())
        _table, _attnum, oid, _size, modifier, fmt = _FIELD_TAIL.unpack_from(body, end + 1)
        columns.append(Column(name, oid, modifier, fmt))
        pos = end + 1 + _FIELD_TAIL.size
    return columns


def parse_parameter_description(body: bytes) -> list[int]:
    count = INT16.unpack_from(body)[0]
    return list(struct.unpack_from(f"!{count}I", body, 2))


def parse_data_row(body: bytes) -> list[bytes | None]:
    count = INT16.unpack_from(body)[0]
    pos = 2
    values: list[bytes | None] = []
    unpack = INT32.unpack_from
    for _ in range(count):
        length = unpack(body, pos)[0]
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(body[pos : pos + length])
            pos += length
    return values


def command_tag(body: bytes) -> str:
    return body[:-1].decode(encoding.current())


# --- decoding what the client sends ---------------------------------------------------------


class BodyReader:
    """Reads a message body field by field, failing as PostgreSQL's pqformat.c does."""

    __slots__ = ("body", "pos")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.pos = 0

    def _take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.body):
            raise MessageFormatError("insufficient data left in message")
        chunk = self.body[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def byte(self) -> bytes:
        if self.pos >= len(self.body):
            raise MessageFormatError("no data left in message")
        return self._take(1)

    def int16(self) -> int:
        return int(INT16.unpack(self._take(2))[0])

    def int32(self) -> int:
        return int(INT32.unpack(self._take(4))[0])

    def uint32(self) -> int:
        return int(UINT32.unpack(self._take(4))[0])

    def string(self) -> str:
        end = self.body.find(b"\x00", self.pos)
        if end < 0:
            raise MessageFormatError("invalid string in message")
        raw = self.body[self.pos : end]
        self.pos = end + 1
        return raw.decode(encoding.current())

    def value(self) -> bytes | None:
        """A length-prefixed value, -1 for NULL (a Bind parameter)."""
        length = self.int32()
        if length == -1:
            return None
        return self._take(length)

    def end(self) -> None:
        if self.pos != len(self.body):
            raise MessageFormatError("invalid message format")


@dataclass(frozen=True, slots=True)
class ParseMessage:
    name: str
    sql: str
    param_oids: list[int]


@dataclass(frozen=True, slots=True)
class BindMessage:
    portal: str
    statement: str
    formats: list[int]
    """One format code per parameter (PostgreSQL's one-for-all and none expanded)."""
    values: list[bytes | None]
    result_formats: list[int]


@dataclass(frozen=True, slots=True)
class Target:
    """What a Describe or Close names: a statement (``b"S"``) or a portal (``b"P"``)."""

    kind: bytes
    name: str


@dataclass(frozen=True, slots=True)
class ExecuteMessage:
    portal: str
    max_rows: int


def decode_parse(body: bytes) -> ParseMessage:
    reader = BodyReader(body)
    name, sql = reader.string(), reader.string()
    oids = [reader.uint32() for _ in range(reader.int16())]
    reader.end()
    return ParseMessage(name, sql, oids)


def decode_bind(body: bytes, check: Callable[[str, str, int], None] | None = None) -> BindMessage:
    """A Bind, read in PostgreSQL's order: ``check(portal, statement, count)`` judges the
    statement and the parameter count before any value is read; text values must be
    UTF-8."""
    reader = BodyReader(body)
    portal, statement = reader.string(), reader.string()
    formats = [reader.int16() for _ in range(reader.int16())]
    count = reader.int16()
    if len(formats) > 1 and len(formats) != count:
        raise MessageFormatError(
            f"bind message has {len(formats)} parameter formats but {count} parameters"
        )
    if check is not None:
        check(portal, statement, count)
    per_param = formats * count if len(formats) == 1 else formats or [0] * count
    where = f'portal "{portal}"' if portal else "unnamed portal"
    values: list[bytes | None] = []
    for index in range(count):
        try:
            value = reader.value()
            if value is not None and not per_param[index]:
                _valid_text(value)
        except MessageFormatError as error:
            error.context = f"{where} parameter ${index + 1}"
            raise
        values.append(value)
    result_formats = [reader.int16() for _ in range(reader.int16())]
    reader.end()
    return BindMessage(portal, statement, per_param, values, result_formats)


def _valid_text(raw: bytes) -> None:
    try:
        raw.decode(encoding.current())
    except UnicodeDecodeError as error:
        raise MessageFormatError(invalid_encoding(raw, error.start), "22021") from error


def decode_target(body: bytes, what: str) -> Target:
    """A Describe's or Close's target; ``what`` is "DESCRIBE" or "CLOSE" for the error."""
    reader = BodyReader(body)
    kind = reader.byte()
    name = reader.string()
    reader.end()
    if kind not in (b"S", b"P"):
        raise MessageFormatError(f"invalid {what} message subtype {kind[0]}")
    return Target(kind, name)


def decode_execute(body: bytes) -> ExecuteMessage:
    reader = BodyReader(body)
    portal = reader.string()
    max_rows = reader.int32()
    reader.end()
    return ExecuteMessage(portal, max_rows)


def leading_name(body: bytes, text: str = "utf-8") -> str:
    """The first string of a Parse, Bind or Execute body (its statement or portal name)
    in the session's encoding ``text``, or "" when the body has none; only for telling
    messages apart, never for answers."""
    end = body.find(b"\x00")
    return body[:end].decode(text, "replace") if end >= 0 else ""
