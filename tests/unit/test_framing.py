"""The client-side framer, driven with bytes only."""

from __future__ import annotations

import struct

import pytest

from proxy.wire import codec
from proxy.wire.codec import Message
from proxy.wire.framing import Chunk, ClientFramer

QUERY = codec.message(b"Q", b"SELECT 1\0")
PGML_QUERY = codec.message(b"Q", b"select PgMl.embed('m', 't')\0")
BIND = codec.message(b"B", b"\0\0\0\0\0\0\0\0")
SYNC = codec.message(b"S")
COPY = codec.message(b"d", b"x" * 300)
WATCHED = (ord("Q"), ord("P"))
COUNTED = frozenset(b"QPBDECSF")


def wants_pgml(mtype: int, data: bytes, start: int, end: int) -> bool:
    return codec.mentions_pgml(data, start + 5, end)


def make(relayed: list[int]) -> ClientFramer:
    return ClientFramer(WATCHED, COUNTED, relayed.append)


def relay(data: bytes, chunks: list[Chunk] | None) -> bytes:
    if chunks is None:
        return data
    return b"".join(c.raw if isinstance(c, Message) else c for c in chunks)


def test_a_plain_read_is_relayed_as_it_came_and_its_requests_counted() -> None:
    relayed: list[int] = []
    framer = make(relayed)
    assert framer.feed(QUERY + BIND + COPY + SYNC, wants_pgml) is None
    assert relayed == list(b"QBS") and framer.at_boundary


def test_framing_stops_after_a_wanted_message_and_keeps_the_rest() -> None:
    relayed: list[int] = []
    framer = make(relayed)
    chunks = framer.feed(QUERY + PGML_QUERY + BIND + SYNC, wants_pgml)
    assert chunks == [QUERY, Message(ord("Q"), PGML_QUERY)]
    assert framer.rest == BIND + SYNC
    assert relayed == [ord("Q")]  # the pgml Query is the session's, the rest not yet framed


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64])
def test_any_split_relays_the_same_bytes_in_order(size: int) -> None:
    stream = QUERY + BIND + COPY + PGML_QUERY + SYNC
    relayed: list[int] = []
    framer = make(relayed)
    out = bytearray()
    taken: list[bytes] = []
    pending = b""
    for i in range(0, len(stream), size):
        piece = pending + stream[i : i + size]
        chunks = framer.feed(piece, wants_pgml)
        for chunk in [piece] if chunks is None else chunks:
            if isinstance(chunk, Message):
                taken.append(chunk.raw)
            else:
                out += chunk
        pending, framer.rest = framer.rest, b""
    chunks = framer.feed(pending, wants_pgml) if pending else []
    out += relay(pending, chunks) if pending else b""
    assert taken == [PGML_QUERY]
    assert bytes(out) == QUERY + BIND + COPY + SYNC
    assert relayed == list(b"QBS")


def test_a_watched_message_is_held_until_whole() -> None:
    framer = make([])
    assert framer.feed(PGML_QUERY[:10], wants_pgml) == []
    assert not framer.at_boundary
    assert framer.feed(PGML_QUERY[10:], wants_pgml) == [Message(ord("Q"), PGML_QUERY)]


def test_an_unwatched_message_streams_without_buffering() -> None:
    framer = make([])
    assert framer.feed(COPY[:100], wants_pgml) is None
    assert not framer.at_boundary
    assert framer.feed(COPY[100:], wants_pgml) is None
    assert framer.at_boundary


@pytest.mark.parametrize("length", [2**31, 2**30, 3])
def test_a_length_postgresql_refuses_stops_framing(length: int) -> None:
    relayed: list[int] = []
    framer = make(relayed)
    bad = b"Q" + struct.pack("!I", length) + b"rest"
    assert framer.feed(QUERY + bad, wants_pgml) == [QUERY]
    assert framer.broken == bad and relayed == [ord("Q")]


@pytest.mark.parametrize(("mtype", "length"), [(b"S", 10_001), (b"E", 20_000), (b"c", 10_001)])
def test_small_messages_have_postgresqls_small_limit(mtype: bytes, length: int) -> None:
    framer = make([])
    assert framer.feed(mtype + struct.pack("!I", length), wants_pgml) == []
    assert framer.broken


def test_a_bad_length_split_across_reads() -> None:
    framer = make([])
    framer.feed(b"d\x80", wants_pgml)
    assert framer.feed(b"\0\0\0", wants_pgml) == []
    assert framer.broken == b"d\x80\0\0\0"
