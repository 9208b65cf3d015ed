"""A simple Query that calls pgml functions, answered as PostgreSQL answers a Query.

One statement runs in PostgreSQL's own implicit transaction (or the client's block):
the helper statements go with Flush and the statement that replaces the client's, with
its Sync, in the same write, so a failure anywhere aborts it all.  Several statements
in one Query run in one transaction of the proxy's, unless they manage transactions
themselves, and stop at the first error, as PostgreSQL runs them.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from handlers.functions import PgmlError, unsupported
from proxy import metrics
from proxy.engine import errors, extension, pipeline
from proxy.engine.calls import mentions_sql_function
from proxy.engine.planner import (
    Parsed,
    Piece,
    TooDeep,
    by_size,
    controls_transaction,
    depth_verdict,
    off_loop,
    prepare_query,
)
from proxy.engine.prepared import Execute
from proxy.engine.sessionsql import BoundParams
from proxy.engine.streams import streamable
from proxy.engine.upstream import ERRORS, ServerError, Skipped
from proxy.wire import codec
from proxy.wire.codec import Backend, Frontend, Message
from proxy.wire.replies import EVERYTHING

if TYPE_CHECKING:
    from proxy.engine.session import Engine

_ALL_BUT_READY = EVERYTHING - {Backend.READY_FOR_QUERY}


async def answer_query(engine: Engine, message: Message) -> None:
    upstream = engine.upstream
    try:
        sql = await by_size(len(message.body), _query_text, message.body)
    except (codec.MessageFormatError, UnicodeDecodeError):
        # PostgreSQL's own error (22021, 08P01), before any function could run
        _relay(engine, message)
        return
    try:
        prepared = await off_loop(prepare_query, sql)
    except TooDeep:
        await _too_deep(engine, sql)
        return
    except PgmlError as error:
        refuse(engine, error)
        return
    pieces = [piece for piece, _ in prepared]
    try:
        parsed: list[Statement | None] = [
            _recognise(engine, piece.text) if statement is None else statement
            for piece, statement in prepared
        ]
    except PgmlError as error:
        refuse(engine, error)
        return
    if upstream.status == b"E" and not any(controls_transaction(p.text) for p in pieces):
        _relay(engine, message)  # PostgreSQL refuses it (25P02) before anything runs
        return
    if all(p is None for p in parsed):
        if any(mentions_sql_function(p.text) for p in pieces):
            try:
                await ensure_catalog(engine)
            except PgmlError as error:
                refuse(engine, error)
                return
        _relay(engine, message)
        return
    if len(pieces) == 1:
        assert parsed[0] is not None
        await _one_statement(engine, parsed[0])
    else:
        await _statements(engine, pieces, parsed)


Statement = Parsed | extension.ExtensionCommand | Execute
"""A statement of a Query that the proxy runs (the others are PostgreSQL's)."""


def _recognise(engine: Engine, text: str) -> extension.ExtensionCommand | Execute | None:
    """A statement without pgml calls that is the proxy's all the same."""
    return extension.recognise(text) or engine.prepared.recognise(text)


async def ensure_catalog(engine: Engine) -> None:
    """The catalog exists (statements PostgreSQL runs may call its SQL functions)."""
    if engine.services.service is not None:
        await engine.services.ensure_catalog(engine.database)


def refuse(engine: Engine, error: PgmlError) -> None:
    """A Query answered with an error of the proxy's, before anything of it ran."""
    errors.refuse(engine.upstream, error)
    engine.upstream.sync(EVERYTHING)


def _query_text(body: bytes) -> str:
    reader = codec.BodyReader(body)
    sql = reader.string()
    reader.end()
    return sql


async def _too_deep(engine: Engine, sql: str) -> None:
    """A statement nested more deeply than the proxy reads: PostgreSQL's own error when
    its parser refuses it too, else the proxy's limit."""
    error = await depth_verdict(engine.upstream, sql)
    errors.report(engine.upstream, error)
    engine.upstream.sync(EVERYTHING)


def _relay(engine: Engine, message: Message) -> None:
    metrics.statements_relayed += 1
    engine.upstream.relay(message.raw, Frontend.QUERY)
    engine.upstream.push()


async def _one_statement(
    engine: Engine, parsed: Statement, params: BoundParams | None = None
) -> None:
    upstream = engine.upstream
    if isinstance(parsed, Execute):
        await _execute(engine, parsed)
        return
    if isinstance(parsed, Parsed) and parsed.prepares:
        await _prepare(engine, parsed)
        return
    if isinstance(parsed, extension.ExtensionCommand):
        with errors.told(upstream):
            await extension.run(engine, parsed, helper="", held=False)
        upstream.sync(EVERYTHING)
        return
    execution = engine.execution(params=params)
    execution.may_stream = streamable(parsed)
    execution.may_inline = True
    try:
        with errors.told(upstream) as ran:
            await pipeline.run(engine, execution, parsed, pipeline.simple_query())
        if ran.error is not None:
            execution.abandon()
        else:
            await execution.drop_temp_tables()
    except BaseException:
        execution.abandon()
        raise
    upstream.sync(EVERYTHING)


async def _prepare(engine: Engine, parsed: Parsed) -> None:
    """``PREPARE name AS`` a statement that calls pgml functions: PostgreSQL prepares its
    skeleton, and the proxy keeps it (see :mod:`proxy.engine.prepared`)."""
    upstream = engine.upstream
    with errors.told(upstream):
        await pipeline.prepare(engine, engine.execution(), parsed, pipeline.simple_query())
    upstream.sync(EVERYTHING)


async def _execute(engine: Engine, command: Execute) -> None:
    """``EXECUTE`` of a kept statement: run with its arguments, or PostgreSQL's own
    ``EXECUTE`` where PostgreSQL no longer holds the statement the proxy prepared."""
    upstream = engine.upstream
    with errors.told(upstream) as binding:
        bound = await engine.prepared.bind(engine.execution(), command)
    if binding.error is not None:
        upstream.sync(EVERYTHING)
        return
    if bound is not None:
        await _one_statement(engine, *bound)
        return
    with contextlib.suppress(_Failed):
        await _plain(engine, [Piece(command.text, 0)])
    upstream.sync(EVERYTHING)


async def _statements(engine: Engine, pieces: list[Piece], parsed: list[Statement | None]) -> None:
    upstream = engine.upstream
    wrap = upstream.status == b"I" and not any(controls_transaction(p.text) for p in pieces)
    if wrap:
        upstream.query("BEGIN")
    plain: list[Piece] = []
    failed = True
    try:
        for piece, statement in zip(pieces, parsed, strict=True):
            if statement is None:
                plain.append(piece)
                continue
            if plain:
                await _plain(engine, plain)
                plain = []
            if isinstance(statement, extension.ExtensionCommand):
                with errors.told(upstream) as ran:
                    await extension.run(engine, statement, helper="", held=False)
                if ran.error is not None:
                    raise _Failed from ran.error
                continue
            if isinstance(statement, Execute) or statement.prepares:
                alone = unsupported(
                    "PREPARE and EXECUTE of a statement that calls pgml functions run in a "
                    "Query of their own",
                    hint="Send them one statement at a time.",
                )
                errors.report(engine.upstream, alone)
                raise _Failed from alone
            execution = engine.execution()  # neither streams nor inlines: a Query's rows
            with errors.told(upstream) as evaluated:
                done = await pipeline.run(engine, execution, statement, pipeline.simple_query())
            if evaluated.error is not None:
                raise _Failed from evaluated.error
            assert done is not None
            await execution.drop_temp_tables()
            upstream.flush()
            try:
                await done
            except (ServerError, Skipped) as error:  # PostgreSQL has told the client
                raise _Failed from error
        if plain:
            await _plain(engine, plain)
        failed = False
    except _Failed:
        await upstream.sync()  # out of the failed batch, if it was one
    if wrap:
        upstream.query("ROLLBACK" if failed else "COMMIT", ERRORS)
    reply = upstream.sync()
    await reply
    upstream.local(codec.ready_for_query(reply.status))


class _Failed(Exception):
    """A statement failed and the client has been told: the rest of the Query is not run."""


async def _plain(engine: Engine, pieces: list[Piece]) -> None:
    """Statements without pgml calls go to PostgreSQL as the client wrote them."""
    reply = engine.upstream.query(
        "".join(p.text for p in pieces), _ALL_BUT_READY, position=pieces[0].offset
    )
    engine.upstream.flush()
    await reply
    if reply.error is not None:
        raise _Failed
