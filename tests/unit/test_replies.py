"""The reply queue, driven with bytes only: requests recorded, server bytes in, client
bytes and sink deliveries out."""

from __future__ import annotations

import time

import pytest

from proxy.wire import codec
from proxy.wire.codec import Frontend, Message
from proxy.wire.replies import EVERYTHING, RELAYED, Expected, ReplyQueue

P, B, D, E, C, S, Q = (ord(c) for c in "PBDECSQ")
PARSE_OK = codec.PARSE_COMPLETE
BIND_OK = codec.BIND_COMPLETE
NO_DATA = codec.NO_DATA
ROW = codec.data_row([b"1"])
DONE = codec.command_complete("SELECT 1")
ERROR = codec.PgError("ERROR", "42P01", "no such table", extra={"P": "15"}).encode()
NOTICE = codec.PgError("NOTICE", "00000", "hello").encode(b"N")
IDLE = codec.ready_for_query(b"I")
IN_BLOCK = codec.ready_for_query(b"T")


class Recorder:
    """A sink that records what reaches it."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.outcome: str | None = None
        self.error: bytes | None = None

    def deliver(self, message: Message) -> None:
        self.messages.append(message.raw)

    def complete(self, error: Message | None) -> None:
        self.outcome = "error" if error is not None else "done"
        self.error = None if error is None else error.raw

    def skip(self, cause: Message | None) -> None:
        self.outcome = "skipped"
        self.error = None if cause is None else cause.raw


def mine(kind: int, sink: Recorder, forward: frozenset[int] = frozenset()) -> Expected:
    return Expected(kind, forward, sink, None)


def test_pass_through_only_accounts_and_tracks_the_status() -> None:
    queue = ReplyQueue()
    for kind in (P, B, E, S):
        queue.expect(RELAYED[kind])
    assert not queue.routed and queue.busy
    queue.account(PARSE_OK + BIND_OK + ROW + DONE + IN_BLOCK)
    assert not queue.busy and queue.status == b"T" and queue.at_boundary


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 100])
def test_accounting_survives_any_split(size: int) -> None:
    queue = ReplyQueue()
    for kind in (Q, Q):
        queue.expect(RELAYED[kind])
    stream = ROW + DONE + IN_BLOCK + NOTICE + ROW + DONE + IDLE
    for i in range(0, len(stream), size):
        queue.account(stream[i : i + size])
    assert not queue.busy and queue.status == b"I" and queue.at_boundary


def test_the_proxys_replies_go_to_its_sink_the_clients_to_the_client() -> None:
    queue = ReplyQueue()
    sink = Recorder()
    queue.expect(RELAYED[Q])
    queue.expect(mine(E, sink))
    assert queue.routed
    out = queue.feed(DONE + IDLE + ROW + DONE)
    assert out == DONE + IDLE
    assert sink.messages == [ROW, DONE] and sink.outcome == "done"
    assert not queue.routed


def test_notices_always_reach_the_client() -> None:
    queue = ReplyQueue()
    sink = Recorder()
    queue.expect(mine(E, sink))
    assert queue.feed(NOTICE + ROW + DONE) == NOTICE
    assert sink.messages == [ROW, DONE]


def test_a_local_answer_waits_for_the_replies_before_it() -> None:
    queue = ReplyQueue()
    queue.expect(RELAYED[E])
    assert queue.local(PARSE_OK) == b""
    assert queue.feed(ROW) == ROW
    assert queue.feed(DONE) == DONE + PARSE_OK
    assert not queue.busy
    assert queue.local(BIND_OK) == BIND_OK  # nothing owed: at once


def test_after_an_error_the_batch_is_skipped_to_its_sync_local_answers_too() -> None:
    queue = ReplyQueue()
    later = Recorder()
    queue.expect(RELAYED[P])
    queue.local(PARSE_OK)
    queue.expect(mine(E, later))
    queue.expect(RELAYED[S])
    out = queue.feed(ERROR + IDLE)
    assert out == ERROR + IDLE  # no ParseComplete for the skipped Parse
    assert later.outcome == "skipped" and later.error is None


def test_requests_sent_after_the_error_arrived_are_skipped_until_a_sync() -> None:
    queue = ReplyQueue()
    queue.expect(RELAYED[E])
    queue.feed(ERROR)
    assert queue.ignoring
    late = Recorder()
    queue.expect(mine(D, late))
    assert late.outcome == "skipped"
    assert queue.local(NO_DATA) == b""
    queue.expect(RELAYED[S])
    assert not queue.ignoring
    assert queue.feed(IDLE) == IDLE


def test_the_proxys_own_failure_explains_what_is_skipped_after_it() -> None:
    queue = ReplyQueue()
    failing, after = Recorder(), Recorder()
    queue.expect(mine(P, failing))
    queue.expect(mine(D, after))
    assert queue.feed(ERROR) == b""
    assert failing.outcome == "error" and failing.error == ERROR
    assert after.outcome == "skipped" and after.error == ERROR
    # the answer to the client's message that failed is not dropped
    assert queue.local(ERROR) == ERROR


def test_the_proxys_answer_queued_before_its_own_request_fails_still_reaches_the_client() -> None:
    """A statement stopped by the proxy (its answer queued behind a fetch of its own)
    while a forwarded cancel fails that fetch: the client still gets the answer."""
    queue = ReplyQueue()
    fetch, after = Recorder(), Recorder()
    queue.expect(mine(E, fetch))
    assert queue.local(ERROR) == b""
    queue.expect(mine(P, after))
    cancelled = codec.PgError("ERROR", "57014", "canceling statement").encode()
    assert queue.feed(cancelled) == ERROR
    assert fetch.outcome == "error" and after.outcome == "skipped"
    assert queue.ignoring and not queue.busy and not queue.routed
    queue.expect(RELAYED[S])
    assert queue.feed(IDLE) == IDLE


def test_forwarded_errors_of_rewritten_sql_lose_their_position() -> None:
    queue = ReplyQueue()
    sink = Recorder()
    queue.expect(Expected(E, frozenset({ord("E"), ord("D"), ord("C")}), sink, None))
    out = queue.feed(ROW + ERROR)
    assert out[: len(ROW)] == ROW
    fields = codec.parse_error_fields(out[len(ROW) + 5 :])
    assert fields["C"] == "42P01" and "P" not in fields
    assert sink.outcome == "error"


def test_errors_of_a_statement_sent_from_inside_a_longer_text_move_their_position() -> None:
    queue = ReplyQueue()
    queue.expect(Expected(Q, EVERYTHING - {ord("Z")}, Recorder(), 100))
    out = queue.feed(ERROR + IDLE)
    assert codec.parse_error_fields(out[5:])["P"] == "115"


def test_a_query_is_answered_at_its_ready_for_query_even_after_an_error() -> None:
    queue = ReplyQueue()
    sink = Recorder()
    queue.expect(mine(Q, sink))
    queue.feed(ERROR)
    assert sink.outcome is None and not queue.ignoring
    queue.feed(IN_BLOCK)
    assert sink.outcome == "done" and sink.messages == [ERROR, IN_BLOCK]


def test_a_forwarded_message_cut_short_streams_on_and_a_sinks_waits_whole() -> None:
    queue = ReplyQueue()
    sink = Recorder()
    big = codec.data_row([b"y" * 1000])
    queue.expect(Expected(E, frozenset({ord("D"), ord("C")}), sink, None))
    assert queue.feed(big[:10]) == big[:10]
    assert queue.feed(big[10:] + DONE[:3]) == big[10:]  # a bare header is held back
    assert queue.feed(DONE[3:]) == DONE
    assert sink.outcome == "done"
    other = Recorder()
    queue.expect(mine(E, other))
    assert queue.feed(big[:500]) == b"" and other.messages == []
    assert queue.feed(big[500:] + DONE) == b""
    assert other.messages == [big, DONE]


def test_a_message_being_written_whole_can_finish_after_the_proxy_starts_routing() -> None:
    queue = ReplyQueue()
    queue.expect(RELAYED[E])
    big = codec.data_row([b"z" * 100])
    queue.account(big[:3])  # the session wrote these bytes itself
    sink = Recorder()
    queue.expect(mine(E, sink))
    assert queue.routed
    assert queue.feed(big[3:] + DONE + ROW + DONE) == big[3:] + DONE
    assert sink.messages == [ROW, DONE]


def test_portals_end_with_the_transaction() -> None:
    queue = ReplyQueue()
    queue.expect(RELAYED[S])
    bound_after = queue.pushed_syncs
    queue.feed(IN_BLOCK) if queue.routed else queue.account(IN_BLOCK)
    assert queue.idle_through <= bound_after
    queue.expect(RELAYED[Q])
    queue.account(DONE + IDLE)
    assert queue.idle_through > bound_after


def test_replies_with_nothing_owed_go_to_the_client() -> None:
    fatal = codec.PgError("FATAL", "57P01", "terminating connection").encode()
    assert ReplyQueue().feed(fatal) == fatal


def test_frontend_messages_without_replies_are_not_expected() -> None:
    assert Frontend.FLUSH not in RELAYED and Frontend.TERMINATE not in RELAYED


def parameter_status(name: str, value: str) -> bytes:
    return codec.message(b"S", name.encode() + b"\x00" + value.encode() + b"\x00")


ENCODING_SET = (
    parameter_status("DateStyle", "ISO, MDY")
    + parameter_status("client_encoding", "LATIN1")
    + DONE
    + IDLE
)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, 100])
def test_client_encoding_is_tracked_through_any_split(size: int) -> None:
    """Passed through (accounted) or routed (fed), however the server's bytes are cut."""
    for routed in (False, True):
        queue = ReplyQueue()
        queue.expect(RELAYED[Q])
        sink = Recorder()
        if routed:
            queue.expect(mine(Q, sink))
        stream = ENCODING_SET + (DONE + IDLE if routed else b"")
        out = b""
        for i in range(0, len(stream), size):
            chunk = stream[i : i + size]
            if queue.routed:
                out += queue.feed(chunk)
            else:
                queue.account(chunk)
        assert queue.client_encoding == "LATIN1"
        assert not queue.busy
        if routed:
            assert out == ENCODING_SET and sink.outcome == "done"


def test_client_encoding_from_a_whole_message() -> None:
    queue = ReplyQueue()
    queue.parameter_status(b"client_encoding\x00WIN1252\x00")
    assert queue.client_encoding == "WIN1252"
    queue.parameter_status(b"application_name\x00UTF8\x00")
    assert queue.client_encoding == "WIN1252"


def test_a_sync_point_costs_the_same_however_many_answers_are_owed() -> None:
    """A client may pipeline many thousands of statements behind a slow one: each costs
    the queue the same whether none or a hundred thousand are owed before it (walking
    every owed entry at each sync point made it quadratic: 50,000 took 9 s)."""
    queue = ReplyQueue()
    assert queue.local(b"held", held=True) == b""
    began = time.perf_counter()
    for _ in range(50_000):
        queue.expect(RELAYED[Q])
    assert time.perf_counter() - began < 2
    assert queue.feed(DONE + IDLE) == b"held" + DONE + IDLE
