"""Values between Python and PostgreSQL's text format, in one place.

Every value the proxy hands PostgreSQL goes as text (a bound parameter in text format,
cast in the SQL to its type); every argument it reads comes back as text too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from handlers.functions import PgmlError
from proxy.wire import encoding

TEXT_OID = 25
UNKNOWN_OID = 705
TEXT_ARRAY_OID = 1009
REAL_ARRAY_OID = 1021
ANY_ARRAY_OID = 2277
"""An array whose element type the statement's syntax does not tell."""

TYPE_NAMES = {
    25: "text",
    1043: "character varying",
    1042: "character",
    19: "name",
    705: "unknown",
    1009: "text[]",
    1015: "character varying[]",
    20: "bigint",
    23: "integer",
    21: "smallint",
    700: "real",
    701: "double precision",
    1700: "numeric",
    16: "boolean",
    114: "json",
    3802: "jsonb",
    3807: "jsonb[]",
    1021: "real[]",
    1005: "smallint[]",
    1007: "integer[]",
    1016: "bigint[]",
    1022: "double precision[]",
    1231: "numeric[]",
    1000: "boolean[]",
    199: "json[]",
    17: "bytea",
    18: '"char"',
    26: "oid",
    1082: "date",
    1083: "time without time zone",
    1114: "timestamp without time zone",
    1184: "timestamp with time zone",
    1186: "interval",
    2950: "uuid",
    869: "inet",
    2249: "record",
    2277: "anyarray",
}


CAST_OIDS = {
    "int": 23,
    "bigint": 20,
    "smallint": 21,
    "real": 700,
    "double precision": 701,
    "decimal": 1700,
    "text": 25,
    "varchar": 1043,
    "boolean": 16,
    "json": 114,
    "jsonb": 3802,
}
"""Scalar types by their name in sqlglot's PostgreSQL rendering of a cast."""


def number_oid(text: str) -> int:
    """The type PostgreSQL gives a numeric constant written ``text``."""
    if not text.isdigit():
        return 1700
    number = int(text)
    return 23 if number < 2**31 else 20 if number < 2**63 else 1700


def type_name(oid: int) -> str:
    return TYPE_NAMES.get(oid, f"type {oid}")


def encode(kind: str, value: Any) -> str | None:
    """``value`` in PostgreSQL's text input format for SQL type ``kind``."""
    if value is None:
        return None
    if kind == "text":
        return str(value)
    if kind in ("real", "double precision"):
        return _float_text(value)
    if kind == "real[]":
        return "{" + ",".join("NULL" if v is None else _float_text(v) for v in value) + "}"
    if kind == "text[]":
        return text_array_literal([None if v is None else str(v) for v in value])
    if kind in ("jsonb", "json"):
        return json.dumps(value, ensure_ascii=False)
    if kind == "boolean":
        return "t" if value else "f"
    return str(value)


def encode_all(kind: str, results: list[Any]) -> list[str | None]:
    """:func:`encode` of each of a batch's results (run off the loop: a batch of vectors
    is megabytes of text)."""
    return [encode(kind, r) for r in results]


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(float(value))


def text_array_literal(values: Sequence[str | None]) -> str:
    """A ``text[]`` literal: every element quoted, so no value can break out of it."""
    quoted = (
        "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for v in values
    )
    return "{" + ",".join(quoted) + "}"


FETCHED_AS_JSON = frozenset({"text[]", "jsonb[]", "real[]"})
"""Argument types the proxy reads as ``to_json(x)::text`` (arrays); the others it reads
in their own text output."""


def fetch_expression(kind: str, column: str) -> str:
    """SQL reading an argument column of type ``kind`` in the form :func:`decode` takes."""
    return f"to_json({column})::text" if kind in FETCHED_AS_JSON else column


def decode(kind: str, raw: bytes | None) -> Any:
    """An argument's value from the text :func:`fetch_expression` reads."""
    return decoder(kind)(raw)


def decoder(kind: str) -> Callable[[bytes | None], Any]:
    """:func:`decode` for arguments of type ``kind``, chosen once for a column's rows."""
    if kind in FETCHED_AS_JSON or kind in ("record", "jsonb"):
        read: Callable[[str], Any] = json.loads
    elif kind == "text":
        read = str
    elif kind == "bigint":
        read = int
    elif kind == "real":
        read = float
    elif kind == "boolean":
        read = "t".__eq__
    else:
        raise PgmlError("XX000", f"no decoder for arguments of type {kind}")
    codec = encoding.current()

    def decoded(raw: bytes | None) -> Any:
        return None if raw is None else read(raw.decode(codec))

    return decoded


def client_bytes(value: str) -> bytes:
    """A value for the session in its client_encoding; one with a character that
    encoding lacks fails as PostgreSQL's conversion fails (22P05)."""
    try:
        return value.encode(encoding.current())
    except UnicodeEncodeError as error:
        shown = " ".join(f"0x{b:02x}" for b in value[error.start].encode("utf-8"))
        raise PgmlError(
            "22P05",
            f'character with byte sequence {shown} in encoding "UTF8" has no equivalent '
            f'in encoding "{encoding.current_name()}"',
        ) from None


def text(raw: bytes | None) -> str:
    """A text result column's value, NULL read as the empty string."""
    return "" if raw is None else raw.decode(encoding.current())


def json_value(text: str) -> Any:
    """A JSON argument given as text, failing as PostgreSQL's json input does."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PgmlError(
            "22P02",
            "invalid input syntax for type json",
            detail=f"{exc.msg} at character {exc.pos + 1}.",
        ) from exc
