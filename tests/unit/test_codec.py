"""The sans-IO codec, driven with bytes only: no sockets, no server."""

from __future__ import annotations

import struct

import pytest

from proxy.wire import codec
from proxy.wire.codec import Message, MessageFormatError


def test_error_response_round_trip() -> None:
    error = codec.PgError("ERROR", "22023", "bad value", detail="d", hint="h", extra={"P": "7"})
    encoded = error.encode()
    assert encoded[:1] == b"E"
    assert struct.unpack("!I", encoded[1:5])[0] == len(encoded) - 1
    fields = codec.parse_error_fields(encoded[5:])
    assert fields == {
        "S": "ERROR",
        "V": "ERROR",
        "C": "22023",
        "M": "bad value",
        "D": "d",
        "H": "h",
        "P": "7",
    }


def test_error_positions_move_or_go() -> None:
    error = codec.PgError("ERROR", "42703", "no column", extra={"P": "7", "F": "x.c"}).encode()
    assert codec.parse_error_fields(codec.moved_position(error, 10)[5:])["P"] == "17"
    assert codec.moved_position(error, 0) == error
    fields = codec.parse_error_fields(codec.moved_position(error, None)[5:])
    assert "P" not in fields and fields["F"] == "x.c" and fields["M"] == "no column"


def test_backend_key_data_round_trip() -> None:
    encoded = codec.backend_key_data(77, b"\xaa" * 32)
    assert codec.parse_backend_key_data(encoded[5:]) == (77, b"\xaa" * 32)


def test_channel_binding_is_not_offered_through_the_proxy() -> None:
    body = struct.pack("!I", codec.AUTH_SASL) + b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
    offered = codec.without_channel_binding(Message(ord("R"), codec.message(b"R", body)))
    assert offered == codec.message(b"R", struct.pack("!I", codec.AUTH_SASL) + b"SCRAM-SHA-256\0\0")
    md5 = codec.message(b"R", struct.pack("!I", 5) + b"salt")
    assert codec.without_channel_binding(Message(ord("R"), md5)) == md5


class TestFrontendMessages:
    def test_bind_round_trips_with_formats_expanded(self) -> None:
        raw = codec.bind("p", "s", [b"1", None, b"xyz"], [1], [0, 1])
        bind = codec.decode_bind(raw[5:])
        assert (bind.portal, bind.statement) == ("p", "s")
        assert bind.values == [b"1", None, b"xyz"]
        assert bind.formats == [1, 1, 1]
        assert bind.result_formats == [0, 1]

    def test_parse_round_trips(self) -> None:
        parse = codec.decode_parse(codec.parse("n", "SELECT $1", [25])[5:])
        assert (parse.name, parse.sql, parse.param_oids) == ("n", "SELECT $1", [25])

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (b"p\0s\0\0\0\0\x01\x00\x00\x00\x10ab\0\0", "insufficient data left in message"),
            (b"p\0s", "invalid string in message"),
            (b"p\0s\0\0\0\0\0\0\0\0", "invalid message format"),
            (
                b"p\0s\0\0\x02\0\0\0\0\0\x01",
                "bind message has 2 parameter formats but 1 parameters",
            ),
        ],
        ids=["value-past-end", "unterminated-name", "trailing-bytes", "format-count"],
    )
    def test_malformed_bind_fails_as_postgresql_does(self, body: bytes, message: str) -> None:
        with pytest.raises(MessageFormatError, match=message):
            codec.decode_bind(body)

    def test_bind_values_in_text_must_be_utf8_and_errors_name_the_parameter(self) -> None:
        raw = codec.bind("", "s", [b"ok", b"caf\xc3\x28"])
        with pytest.raises(MessageFormatError) as raised:
            codec.decode_bind(raw[5:])
        error = raised.value
        assert error.sqlstate == "22021"
        assert error.message == 'invalid byte sequence for encoding "UTF8": 0xc3 0x28'
        assert error.context == "unnamed portal parameter $2"
        assert codec.decode_bind(codec.bind("p", "s", [b"\xff"], [1])[5:]).values == [b"\xff"]

    def test_bind_is_checked_before_its_values_are_read(self) -> None:
        seen: list[tuple[str, str, int]] = []

        def check(portal: str, statement: str, count: int) -> None:
            seen.append((portal, statement, count))
            raise MessageFormatError("wrong count")

        with pytest.raises(MessageFormatError, match="wrong count"):
            codec.decode_bind(b"p\0s\0\0\0\0\x01\x00\x00\x00\x10ab", check)
        assert seen == [("p", "s", 1)]

    def test_describe_and_close_targets(self) -> None:
        target = codec.decode_target(codec.describe(b"P", "cur")[5:], "DESCRIBE")
        assert (target.kind, target.name) == (b"P", "cur")
        with pytest.raises(MessageFormatError, match="invalid CLOSE message subtype 88"):
            codec.decode_target(b"Xname\0", "CLOSE")
        with pytest.raises(MessageFormatError, match="no data left in message"):
            codec.decode_target(b"", "DESCRIBE")

    def test_execute(self) -> None:
        execute = codec.decode_execute(codec.execute("c", 10)[5:])
        assert (execute.portal, execute.max_rows) == ("c", 10)

    def test_row_description_takes_the_formats_a_bind_asked_for(self) -> None:
        field = b"\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0"
        body = struct.pack("!h", 2) + b"a\0" + field + b"b\0" + field
        described = codec.parse_row_description(codec.row_description_with_formats(body, [1])[5:])
        assert [(c.name, c.type_oid, c.format) for c in described] == [("a", 25, 1), ("b", 25, 1)]


def test_the_pgml_test_is_a_case_insensitive_search() -> None:
    data = b"xxQ\0\0\0\x0eselect PgMl.x\0"
    assert codec.mentions_pgml(data, 2, len(data))
    assert not codec.mentions_pgml(b"select 1", 0, 8)
