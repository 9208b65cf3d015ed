"""The sans-IO codec, driven with bytes only: no sockets, no server."""

from __future__ import annotations

import struct

import pytest

from proxy import protocol as pg
from proxy.protocol import Message, MessageFramer, ProtocolViolation


def startup_packet(params: dict[str, str], version: int = 196608) -> bytes:
    body = struct.pack("!I", version)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def relay(framer: MessageFramer, data: bytes, chunks: list[pg.Chunk] | None) -> bytes:
    """What the relay writes for one read: the read itself, or the framer's chunks."""
    if chunks is None:
        return data
    return b"".join(c.raw if isinstance(c, Message) else c for c in chunks)


class TestStartup:
    def test_startup_message_keeps_raw_bytes_and_params(self) -> None:
        packet = startup_packet({"user": "ann", "database": "db", "options": "-c x=1"})
        request = pg.parse_startup_packet(packet)
        assert isinstance(request, pg.StartupMessage)
        assert (request.major, request.minor) == (3, 0)
        assert request.params == {"user": "ann", "database": "db", "options": "-c x=1"}
        assert request.raw == packet

    def test_ssl_and_gssenc_requests(self) -> None:
        assert pg.parse_startup_packet(struct.pack("!II", 8, 80877103)) == pg.SSLRequest()
        assert pg.parse_startup_packet(struct.pack("!II", 8, 80877104)) == pg.GSSENCRequest()

    @pytest.mark.parametrize("secret", [b"\x01\x02\x03\x04", bytes(range(32))])
    def test_cancel_request_round_trips(self, secret: bytes) -> None:
        encoded = pg.CancelRequest(4242, secret).encode()
        assert pg.parse_startup_packet(encoded) == pg.CancelRequest(4242, secret)

    def test_other_protocol_versions_are_passed_on_not_parsed(self) -> None:
        request = pg.parse_startup_packet(struct.pack("!II", 8, 2 << 16))
        assert isinstance(request, pg.StartupMessage)
        assert (request.major, request.minor, dict(request.params)) == (2, 0, {})

    @pytest.mark.parametrize(
        "packet",
        [
            struct.pack("!I", 4),
            struct.pack("!II", 12, 196608) + b"a\0b",  # no terminator
            struct.pack("!II", 11, 196608) + b"a\0\0",  # key without value
            struct.pack("!III", 12, 80877102, 1),  # cancel request too short
        ],
    )
    def test_malformed_startup_packets(self, packet: bytes) -> None:
        with pytest.raises(ProtocolViolation):
            pg.parse_startup_packet(packet)

    def test_reader_waits_for_whole_packet_and_returns_leftover(self) -> None:
        packet = startup_packet({"user": "u"})
        reader = pg.StartupReader()
        assert reader.feed(packet[:3]) is None
        assert reader.feed(packet[3:-1]) is None
        assert reader.feed(packet[-1:] + b"rest") == (packet, b"rest")

    @pytest.mark.parametrize("length", [2**31, 3, 10_001])
    def test_reader_rejects_bad_lengths(self, length: int) -> None:
        with pytest.raises(ProtocolViolation):
            pg.StartupReader().feed(struct.pack("!I", length) + b"\0" * 8)


QUERY = pg.message(b"Q", b"SELECT 1\0")
PGML_QUERY = pg.message(b"Q", b"select PgMl.embed('m', 't')\0")
PARSE = pg.message(b"P", b"\0select pgml.version()\0\0\0")
BIND = pg.message(b"B", b"\0\0\0\0\0\0\0\0")
SYNC = pg.message(b"S")
STREAM = QUERY + PGML_QUERY + BIND + pg.message(b"d", b"x" * 300) + PARSE + SYNC


class TestFramer:
    def make(self) -> MessageFramer:
        return MessageFramer(
            watched=(pg.QUERY, pg.PARSE), sync_types=(pg.QUERY, pg.SYNC), step_types=b"PB"
        )

    def test_plain_read_is_relayed_as_is(self) -> None:
        framer = self.make()
        assert framer.feed(QUERY + BIND + SYNC, pg.mentions_pgml) is None
        assert framer.syncs == 2 and framer.at_boundary

    def test_pgml_messages_are_singled_out_case_insensitively(self) -> None:
        chunks = self.make().feed(STREAM, pg.mentions_pgml)
        assert chunks is not None
        found = [c for c in chunks if isinstance(c, Message)]
        assert [m.raw for m in found] == [PGML_QUERY, PARSE]
        assert relay(self.make(), STREAM, chunks) == STREAM

    @pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64])
    def test_any_split_relays_the_same_bytes_in_order(self, size: int) -> None:
        framer = self.make()
        out = bytearray()
        messages: list[bytes] = []
        for i in range(0, len(STREAM), size):
            piece = STREAM[i : i + size]
            chunks = framer.feed(piece, pg.mentions_pgml)
            out += relay(framer, piece, chunks)
            messages += [c.raw for c in chunks or [] if isinstance(c, Message)]
        assert bytes(out) == STREAM
        assert messages == [PGML_QUERY, PARSE]
        assert framer.syncs == 3 and framer.at_boundary

    def test_watched_message_is_held_until_complete(self) -> None:
        framer = self.make()
        assert framer.feed(PGML_QUERY[:10], pg.mentions_pgml) == []
        assert not framer.at_boundary
        chunks = framer.feed(PGML_QUERY[10:], pg.mentions_pgml)
        assert chunks == [Message(pg.QUERY, PGML_QUERY, syncs=0)]

    def test_unwatched_message_streams_without_buffering(self) -> None:
        framer = self.make()
        copy_data = pg.message(b"d", b"y" * 1000)
        assert framer.feed(copy_data[:100], pg.mentions_pgml) is None
        assert not framer.at_boundary
        assert framer.feed(copy_data[100:], pg.mentions_pgml) is None
        assert framer.at_boundary

    @pytest.mark.parametrize("length", [2**31, 3])
    def test_bad_message_length(self, length: int) -> None:
        with pytest.raises(ProtocolViolation):
            self.make().feed(b"Q" + struct.pack("!I", length), pg.mentions_pgml)

    def test_bad_length_split_across_reads(self) -> None:
        framer = self.make()
        framer.feed(b"d\x80", pg.mentions_pgml)
        with pytest.raises(ProtocolViolation):
            framer.feed(b"\0\0\0", pg.mentions_pgml)

    def test_tracks_last_message_type(self) -> None:
        framer = MessageFramer(
            sync_types=(pg.READY_FOR_QUERY,), step_types=b"E1", error_type=pg.ERROR_RESPONSE
        )
        error = pg.PgError("FATAL", "57P01", "bye").encode()
        framer.feed(pg.message(b"1") + pg.ready_for_query(b"I") + error, pg.want_all)
        assert framer.last_type == pg.ERROR_RESPONSE and framer.syncs == 1
        assert framer.steps == 1 and framer.failed


def test_error_response_round_trip() -> None:
    error = pg.PgError("ERROR", "22023", "bad value", detail="d", hint="h", extra={"P": "7"})
    encoded = error.encode()
    assert encoded[:1] == b"E"
    assert struct.unpack("!I", encoded[1:5])[0] == len(encoded) - 1
    fields = pg.parse_error_fields(encoded[5:])
    assert fields == {
        "S": "ERROR",
        "V": "ERROR",
        "C": "22023",
        "M": "bad value",
        "D": "d",
        "H": "h",
        "P": "7",
    }


def test_backend_key_data_round_trip() -> None:
    encoded = pg.backend_key_data(77, b"\xaa" * 32)
    assert pg.parse_backend_key_data(encoded[5:]) == (77, b"\xaa" * 32)


def test_messages_know_their_place_among_sync_points_and_steps() -> None:
    framer = MessageFramer(
        watched=(pg.PARSE,), sync_types=(pg.SYNC,), step_types=b"PBE", error_type=-1
    )
    stream = BIND + SYNC + BIND + pg.message(b"E", b"\0\0\0\0\0") + PARSE
    chunks = framer.feed(stream, pg.mentions_pgml)
    assert chunks is not None
    (parse,) = [c for c in chunks if isinstance(c, Message)]
    assert (parse.syncs, parse.steps) == (1, 2)
    assert (framer.syncs, framer.steps) == (1, 3)


def test_channel_binding_is_not_offered_through_the_proxy() -> None:
    body = struct.pack("!I", pg.AUTH_SASL) + b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
    offered = pg.without_channel_binding(Message(pg.AUTHENTICATION, pg.message(b"R", body)))
    assert offered == pg.message(b"R", struct.pack("!I", pg.AUTH_SASL) + b"SCRAM-SHA-256\0\0")
    md5 = pg.message(b"R", struct.pack("!I", 5) + b"salt")
    assert pg.without_channel_binding(Message(pg.AUTHENTICATION, md5)) == md5
