"""Values in PostgreSQL's text formats, the sans-IO way: arguments read from the text the
proxy asks PostgreSQL for, results written in the text PostgreSQL's input functions take,
in the session's client encoding."""

from __future__ import annotations

import contextvars
import math

import pytest

from handlers.functions import PgmlError
from proxy.engine import values
from proxy.wire import encoding


@pytest.mark.parametrize(
    ("kind", "raw", "value"),
    [
        ("text", b"a b", "a b"),
        ("jsonb", b'{"k": [1, 2]}', {"k": [1, 2]}),
        ("real[]", b"[1.5,-2,3e-05]", [1.5, -2, 3e-05]),
        ("text[]", b'["a",null,"b\\"c"]', ["a", None, 'b"c']),
        ("bigint", b"9007199254740993", 9007199254740993),
        ("real", b"0.25", 0.25),
        ("boolean", b"t", True),
        ("boolean", b"f", False),
        ("record", b'{"f": 1, "g": "x"}', {"f": 1, "g": "x"}),
        ("text", None, None),
    ],
)
def test_an_argument_reads_as_its_type(kind: str, raw: bytes | None, value: object) -> None:
    assert values.decode(kind, raw) == value
    assert values.decoder(kind)(raw) == value


def test_an_argument_of_a_type_without_a_reader_is_the_proxys_own_error() -> None:
    with pytest.raises(PgmlError) as failed:
        values.decoder("point")
    assert failed.value.sqlstate == "XX000"


def test_arguments_read_in_the_client_encoding() -> None:
    def inner() -> str:
        encoding.use("latin-1", "LATIN1")
        return str(values.decoder("text")("café".encode("latin-1")))

    assert contextvars.copy_context().run(inner) == "café"


@pytest.mark.parametrize(
    ("kind", "value", "text"),
    [
        ("real", math.nan, "NaN"),
        ("real", math.inf, "Infinity"),
        ("double precision", -math.inf, "-Infinity"),
        ("real", 0.1, "0.1"),
        ("real[]", [1.0, None, 2.5], "{1.0,NULL,2.5}"),
        ("text[]", ['a"b', "c\\d", None], '{"a\\"b","c\\\\d",NULL}'),
        ("jsonb", {"k": "é"}, '{"k": "é"}'),
        ("boolean", True, "t"),
        ("text", None, None),
    ],
)
def test_a_result_is_written_as_postgresql_reads_it(kind: str, value: object, text: str) -> None:
    assert values.encode(kind, value) == text


def test_a_text_array_literal_quotes_every_element() -> None:
    assert values.text_array_literal(["}", ",", "NULL", ""]) == '{"}",",","NULL",""}'
    assert values.text_array_literal([]) == "{}"


@pytest.mark.parametrize(
    ("text", "oid"),
    [("5", 23), ("2147483648", 20), ("9223372036854775808", 1700), ("1.5", 1700)],
)
def test_a_number_is_typed_as_postgresql_types_a_constant(text: str, oid: int) -> None:
    assert values.number_oid(text) == oid


def test_arrays_are_fetched_as_json_and_the_rest_as_their_own_text() -> None:
    assert values.fetch_expression("real[]", "m.c1") == "to_json(m.c1)::text"
    assert values.fetch_expression("text", "m.c1") == "m.c1"
