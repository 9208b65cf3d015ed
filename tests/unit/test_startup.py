"""The startup phase, sans-IO: packets in, PostgreSQL's decisions out."""

from __future__ import annotations

import struct

import pytest

from proxy.relay.startup import Answer, Cancel, Connect, Drop, Fail, StartupPhase
from proxy.wire import codec

SSL = struct.pack("!II", 8, codec.SSL_REQUEST_CODE)
GSS = struct.pack("!II", 8, codec.GSSENC_REQUEST_CODE)


def startup_packet(params: dict[str, str], version: int = 196608) -> bytes:
    body = struct.pack("!I", version)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def test_a_startup_packet_goes_to_the_server_with_what_followed_it() -> None:
    packet = startup_packet({"user": "ann", "database": "db"})
    (decision,) = StartupPhase(tls=False).feed(packet + b"Q\0\0\0\x05;")
    assert decision == Connect(packet + b"Q\0\0\0\x05;", {"user": "ann", "database": "db"}, 3, ())


def test_a_packet_is_awaited_whole() -> None:
    phase = StartupPhase(tls=False)
    packet = startup_packet({"user": "u"})
    assert phase.feed(packet[:3]) == [] and phase.feed(packet[3:-1]) == []
    assert phase.has_partial_packet
    assert isinstance(phase.feed(packet[-1:])[0], Connect)


@pytest.mark.parametrize("length", [0, 4, 7, 10_005, 2**31])
def test_invalid_lengths_end_without_a_word(length: int) -> None:
    assert StartupPhase(tls=False).feed(struct.pack("!I", length) + bytes(8)) == [
        Drop("invalid length of startup packet")
    ]


def test_the_longest_packet_is_ten_thousand_bytes_after_the_length_word() -> None:
    (decision,) = StartupPhase(tls=False).feed(struct.pack("!I", 10_004) + bytes(10_000))
    assert isinstance(decision, Connect) and decision.major == 0  # the server refuses 0.0


def test_encryption_requests_are_answered_and_repeats_go_to_the_server() -> None:
    phase = StartupPhase(tls=False)
    assert phase.feed(SSL) == [Answer(b"N")]
    assert phase.feed(GSS) == [Answer(b"N")]
    (decision,) = phase.feed(SSL)
    assert isinstance(decision, Connect) and decision.replay == (SSL, GSS)


def test_tls_is_offered_with_a_certificate() -> None:
    assert StartupPhase(tls=True).feed(SSL) == [Answer(b"S", tls=True)]


def test_data_after_an_encryption_request_is_refused_as_postgresql_does() -> None:
    decisions = StartupPhase(tls=False).feed(SSL + startup_packet({"user": "u"}))
    assert decisions[0] == Answer(b"N")
    assert isinstance(decisions[1], Fail)
    assert decisions[1].error.message == "received unencrypted data after SSL request"
    assert "man-in-the-middle" in (decisions[1].error.detail or "")


@pytest.mark.parametrize(
    ("secret", "expected"),
    [(b"abcd", Cancel(codec.CancelRequest(7, b"abcd"))), (bytes(257), None), (b"", None)],
)
def test_cancel_requests(secret: bytes, expected: Cancel | None) -> None:
    packet = struct.pack("!III", 12 + len(secret), codec.CANCEL_REQUEST_CODE, 7) + secret
    (decision,) = StartupPhase(tls=False).feed(packet)
    if expected is None:
        assert isinstance(decision, Cancel | Drop) and not (
            isinstance(decision, Cancel) and decision.request.secret
        )
    else:
        assert decision == expected


def test_parameters_are_read_without_judging_them() -> None:
    body = struct.pack("!I", 196608) + b"user\0\xff\xfe\0lonely\0"
    (decision,) = StartupPhase(tls=False).feed(struct.pack("!I", len(body) + 4) + body)
    assert isinstance(decision, Connect)
    assert decision.params == {"user": "\ufffd\ufffd", "lonely": ""}
