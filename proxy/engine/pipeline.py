"""One pgml statement from its calls to its rows: the path a simple Query and an
extended-protocol portal share.

The calls are evaluated (:meth:`Execution.evaluate`), and the statement that takes the
client's place runs in an upstream portal (:class:`Target`): a simple Query's unnamed
one, described so that the client gets PostgreSQL's RowDescription, or a portal of the
proxy's own in the place of the client's, with its result formats and row limit.  Its
rows, tag and errors are PostgreSQL's own (errors without a position: it is not the text
the client wrote).  Where the calls' values go into the rows as they stream
(:mod:`proxy.engine.inline`), or a call's own rows are the result
(:mod:`proxy.engine.streams`), the proxy sends them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proxy.engine.inline import result_formats
from proxy.engine.inline import send as send_inline
from proxy.engine.planner import Parsed, by_size
from proxy.engine.sessionsql import BoundParams
from proxy.engine.streams import send_rows
from proxy.engine.upstream import ERRORS, ROWS, Reply, ServerError, Skipped, Upstream
from proxy.wire import codec
from proxy.wire.codec import Backend, Frontend

if TYPE_CHECKING:
    from proxy.engine.executor import Execution
    from proxy.engine.session import Engine

FINAL_ROWS = ROWS | ERRORS | {Backend.COPY_OUT, Backend.COPY_DATA, Backend.COPY_DONE}
"""What the statement in the client's place sends the client: PostgreSQL's own."""


@dataclass(eq=False)
class Target:
    """Where the statement in the client's place runs."""

    statement: str
    """Its upstream prepared statement: unnamed (a simple Query's), or named and closed
    as soon as its portal is bound."""
    portal: str
    formats: list[int] = field(default_factory=list)
    """The client's result formats (none: text)."""
    max_rows: int = 0
    describe: bool = False
    """Whether the client gets the RowDescription first (a simple Query's)."""
    started: bool = False
    """Whether its portal has been asked for (it outlives the call, with its rows)."""


def simple_query() -> Target:
    """The unnamed statement and portal of a simple Query, described."""
    return Target("", "", describe=True)


async def run(engine: Engine, execution: Execution, parsed: Parsed, target: Target) -> Reply | None:
    """Evaluate the statement's calls and run it in ``target``: the reply of the
    statement in the client's place where nothing more is the proxy's to send (flushed
    with what follows it), else None, all sent.  Raises the proxy's errors, and
    PostgreSQL's that it has not told the client."""
    final = await execution.evaluate(parsed)
    execution.check_cancel()
    if execution.inline is not None:
        formats = result_formats(target.formats, execution.inline.width)
        assert formats is not None  # checked before the statement was planned so
        await send_inline(execution, execution.inline, formats, describe=target.describe)
        return None
    upstream, params, live = execution.upstream, parameters(execution), execution.live
    if live is None:
        return await start(upstream, final, params, target, FINAL_ROWS)
    if parsed.declares_cursor:
        declared = await start(upstream, final, params, target, FINAL_ROWS)
        upstream.flush()
        try:
            await declared
        except (ServerError, Skipped):  # PostgreSQL has told the client
            execution.abandon()
            return None
        engine.cursors.declared(execution, final, live)
        return None
    executed = await start(upstream, final, params, target, ERRORS)
    upstream.flush()
    with contextlib.suppress(ServerError, Skipped):  # PostgreSQL has told the client
        await send_rows(upstream, live, executed, tag="SELECT")
    return None


async def prepare(engine: Engine, execution: Execution, parsed: Parsed, target: Target) -> None:
    """``PREPARE name AS`` a statement that calls pgml functions: PostgreSQL prepares its
    skeleton and answers, and the proxy keeps it (see :mod:`proxy.engine.prepared`)."""
    name, sql = await engine.prepared.prepare_sql(engine, execution, parsed)
    done = await start(execution.upstream, sql, parameters(execution), target, FINAL_ROWS)
    execution.upstream.flush()
    try:
        await done
    except (ServerError, Skipped):  # PostgreSQL has told the client
        return
    engine.prepared.keep(name, sql, parsed.text)


def parameters(execution: Execution) -> BoundParams:
    """The statement's parameters: the client's, then the proxy's own."""
    return BoundParams(execution.param_values(), execution.param_formats(), execution.param_oids())


async def start(
    upstream: Upstream, sql: str, params: BoundParams, target: Target, rows: frozenset[int]
) -> Reply:
    """``sql`` parsed, bound to ``params`` and executed in ``target``; ``rows``: what of
    its Execute's replies the client gets."""
    parse = await by_size(len(sql), codec.parse, target.statement, sql, params.oids)
    upstream.opened(target.statement)
    upstream.request(parse, Frontend.PARSE, ERRORS)
    bind = codec.bind(
        target.portal, target.statement, params.values, params.formats, target.formats
    )
    upstream.request(bind, Frontend.BIND, ERRORS)
    if target.statement:
        upstream.close(b"S", target.statement)
    if target.describe:
        upstream.describe(b"P", target.portal, frozenset({Backend.ROW_DESCRIPTION}) | ERRORS)
    target.started = True
    return upstream.execute(target.portal, target.max_rows, rows)
