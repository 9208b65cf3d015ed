"""Set-returning calls whose rows reach the client while they are produced.

PostgreSQL still answers for everything but the rows: the statement that replaces the
client's runs over none of the call's rows, so its RowDescription, formats, errors and
transaction state are PostgreSQL's own, and the proxy writes the call's rows after the
RowDescription as they come, then the tag with their number.  That is exact only where
the statement's result *is* the call's rows, ``SELECT * FROM pgml.f(...)`` or ``SELECT
pgml.f(...)`` and nothing else (:func:`streamable`); every other statement gets the rows
collected first, as PostgreSQL would run it.

A cursor declared over such a query (``DECLARE c CURSOR FOR ...``, as psycopg's server-side
cursors and psql's ``FETCH_COUNT`` do) is declared in PostgreSQL over none of the rows,
and the session keeps them (:class:`Cursor`).  ``FETCH [FORWARD] n FROM c`` runs in
PostgreSQL first (its errors and RowDescription are PostgreSQL's) together with a check
that ``c`` is still the cursor the proxy declared, and the proxy adds the next n rows,
waiting for them to be generated.  Any other use of the cursor hands it over first: once
every row is there, the cursor is declared again in PostgreSQL over all of them and
moved to where the client stands, and from then on PostgreSQL alone answers for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from proxy.engine import errors, values
from proxy.engine.names import own
from proxy.engine.planner import Parsed
from proxy.engine.upstream import Reply, ServerError, Skipped, Upstream
from proxy.wire import codec, encoding
from proxy.wire.codec import Backend, Frontend, Message
from proxy.wire.replies import EVERYTHING

if TYPE_CHECKING:
    from proxy.engine.executor import Execution
    from proxy.engine.session import Engine

_HOLD_OR_SCROLL = re.compile(r"\bWITH\s+HOLD\b|(?<!\bNO\s)\bSCROLL\b", re.IGNORECASE)
_NAME = r'"(?:[^"]|"")+"|[A-Za-z_][\w$]*'
_DECLARED = re.compile(rf"\s*DECLARE\s+({_NAME})", re.IGNORECASE)
_FETCH = re.compile(
    r"\s*FETCH\s+(?:(NEXT|FORWARD\s+ALL|ALL|FORWARD\s+\d+|\d+|FORWARD)\s+)?(?:(?:FROM|IN)\s+)?"
    rf"({_NAME})\s*;?\s*",
    re.IGNORECASE,
)
_CLOSE = re.compile(rf"\s*CLOSE\s+({_NAME})\s*;?\s*", re.IGNORECASE)
_KEYWORDS = frozenset({"next", "forward", "all", "from", "in", "prior", "backward"})
_OURS = "SELECT 1 FROM pg_cursors WHERE name = $1 AND statement = $2"
"""Whether the session's cursor of that name is still the one the proxy declared."""
_HELPER = own("cursor")

log = logging.getLogger("pgml_proxy.streams")


def streamable(parsed: Parsed) -> bool:
    """Whether the statement's result is exactly one constant set-returning call's rows
    (and, for a cursor, one that only moves forward and ends with its transaction)."""
    if len(parsed.calls) != 1 or _HOLD_OR_SCROLL.search(parsed.prefix):
        return False
    (call,) = parsed.calls
    tree = parsed.tree
    if call.per_row or not isinstance(tree, exp.Select):
        return False
    if any(v for k, v in tree.args.items() if k not in ("expressions", "from_")):
        return False
    if len(tree.expressions) != 1:
        return False
    (item,) = tree.expressions
    source = tree.args.get("from_")
    if source is None:
        return item is call.node or (isinstance(item, exp.Alias) and item.this is call.node)
    alias = call.alias_node
    return (
        isinstance(item, exp.Star)
        and source.this is call.node
        and all(not v for k, v in call.node.args.items() if k not in ("this", "db", "alias"))
        and (alias is None or len(alias.columns) <= 1)
    )


class LiveRows:
    """A call's rows in PostgreSQL's text format, read from its stream by a task of their
    own as they are produced.  The stream stops when :meth:`stop` is called or when
    ``ended()`` says nobody can read the rows any more."""

    def __init__(self, rows: AsyncIterator[Any], kind: str) -> None:
        self.rows: list[bytes | None] = []
        self.error: Exception | None = None
        self.finished = False
        self.param = -1
        """Which of the statement's parameters holds the rows (none of them, there)."""
        self.ended: Callable[[], bool] = lambda: False
        self._more = asyncio.Event()
        self._task = asyncio.ensure_future(self._read(rows, kind))

    async def _read(self, rows: AsyncIterator[Any], kind: str) -> None:
        try:
            async with contextlib.aclosing(rows):  # type: ignore[type-var]
                async for row in rows:
                    text = values.encode(kind, row)
                    self.rows.append(None if text is None else text.encode(encoding.current()))
                    self._more.set()
                    if self.ended():
                        break
        except Exception as error:
            self.error = error
        finally:
            self.finished = True
            self._more.set()

    async def wait(self, count: int | None) -> None:
        """Until ``count`` rows are there (None: all of them), or the stream has ended."""
        while not self.finished and (count is None or len(self.rows) < count):
            self._more.clear()
            await self._more.wait()

    def stop(self) -> None:
        self._task.cancel()


async def send_rows(upstream: Upstream, live: LiveRows, executed: Reply, *, tag: str) -> int:
    """After ``executed`` (the statement, over none of the rows) has answered, the rows
    to the client as they come and then the tag; raises the stream's error, or
    PostgreSQL's (already told) as :class:`ServerError` or :class:`Skipped`."""
    try:
        await executed
        sent = 0
        while True:
            await live.wait(sent + 1)
            upstream.local(b"".join(codec.data_row([row]) for row in live.rows[sent:]))
            sent = len(live.rows)
            if live.finished:
                break
        if live.error is not None:
            raise live.error
    finally:
        live.stop()
    upstream.local(codec.command_complete(f"{tag} {sent}"))
    return sent


@dataclass(eq=False)
class Cursor:
    """A cursor the proxy declared in PostgreSQL over none of a call's rows."""

    name: str
    spelled: str
    """The name as the client wrote it (quoted or not)."""
    statement: str
    """The DECLARE the proxy sent (PostgreSQL's ``pg_cursors.statement`` of it)."""
    params: list[bytes | None]
    oids: list[int]
    formats: list[int]
    live: LiveRows
    delivered: int = 0
    past_end: bool = False


class Cursors:
    """The session's cursors whose rows the proxy still holds."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.open: dict[str, Cursor] = {}
        self._keys: dict[str, re.Pattern[bytes]] = {}
        """Each cursor's name as a word of lower-case bytes, to spot it in a message."""

    def declared(self, execution: Execution, statement: str, live: LiveRows) -> None:
        """``statement`` (a DECLARE over none of ``live``'s rows) has succeeded."""
        spelled = _DECLARED.match(statement)
        assert spelled is not None
        name = _normal(spelled.group(1))
        old = self.open.pop(name, None)
        if old is not None:
            old.live.stop()
        queue = self.engine.upstream.queue
        mark = queue.pushed_syncs
        live.ended = lambda: queue.idle_through > mark  # the transaction is over
        self.open[name] = Cursor(
            name,
            spelled.group(1),
            statement,
            execution.param_values(),
            execution.param_oids(),
            execution.param_formats(),
            live,
        )
        word = re.escape(name.lower().encode(encoding.current()))
        self._keys[name] = re.compile(rb"(?<![\w$])" + word + rb"(?![\w$])")

    def close(self) -> None:
        """The session ends: every stream stops."""
        for cursor in list(self.open.values()):
            self._forget(cursor)

    def concerns(self, message: Message) -> bool:
        """Whether the message may use one of the cursors (then :meth:`answer` sees it)."""
        if not self.open:
            return False
        self._forget_ended()
        kind = message.type
        if kind == Frontend.QUERY or kind == Frontend.PARSE:
            text = message.body.lower()
            return any(self._keys[name].search(text) for name in self.open)
        if kind == Frontend.EXECUTE:
            return codec.leading_name(message.body, self.engine.text_codec()) in self.open
        return False

    async def answer(self, message: Message) -> bool:
        """Answer a FETCH from a cursor whose rows the proxy holds; before any other use
        hand the cursors it may use over to PostgreSQL.  True when it was answered here."""
        upstream = self.engine.upstream
        if message.type == Frontend.EXECUTE:
            named = [self.open[codec.leading_name(message.body, encoding.current())]]
            return await self._hand_over(named, extended=True)
        try:
            text = codec.BodyReader(message.body).string() if message.type == Frontend.QUERY else ""
        except (codec.MessageFormatError, UnicodeDecodeError):
            return False  # PostgreSQL's to refuse
        if text and upstream.status == b"T":
            fetch = _FETCH.fullmatch(text)
            if fetch is not None and (cursor := self._named(fetch.group(2))) is not None:
                count = _count(fetch.group(1))
                if count is not None and count < 1:
                    pass  # re-fetches the current row: PostgreSQL's, after a hand-over
                else:
                    await self._fetch(cursor, count, text)
                    return True
            close = _CLOSE.fullmatch(text)
            if close is not None and (cursor := self._named(close.group(1))) is not None:
                await self._close(cursor, text)
                return True
        lowered = message.body.lower()
        named = [c for name, c in self.open.items() if self._keys[name].search(lowered)]
        return await self._hand_over(named, extended=message.type != Frontend.QUERY)

    def _named(self, spelled: str) -> Cursor | None:
        if spelled.lower() in _KEYWORDS:
            return None
        return self.open.get(_normal(spelled))

    def _forget_ended(self) -> None:
        for cursor in [c for c in self.open.values() if c.live.ended()]:
            self._forget(cursor)

    async def _fetch(self, cursor: Cursor, count: int | None, sql: str) -> None:
        """PostgreSQL fetches from its cursor (over no rows: it answers for the cursor,
        the columns and the transaction), and the rows are the proxy's."""
        engine = self.engine
        upstream = engine.upstream
        ours = self._check(cursor)
        fetched = upstream.query(sql, frozenset({Backend.ROW_DESCRIPTION, Backend.ERROR}))
        upstream.push()
        await fetched
        try:
            mine = bool((await ours).rows)
        except (ServerError, Skipped):
            mine = False
        if not mine:
            self._forget(cursor)
        if fetched.error is None:
            rows = [codec.data_row(r) for r in fetched.result.rows]  # PostgreSQL's own
            tag = fetched.result.tag
            if mine:
                wanted = None if count is None else cursor.delivered + count
                await cursor.live.wait(wanted)
                if cursor.live.error is not None:
                    _fail(engine, cursor.live.error, extended=False)
                    self._forget(cursor)
                    return
                new = cursor.live.rows[cursor.delivered : wanted]
                rows = [codec.data_row([row]) for row in new]
                cursor.delivered += len(new)
                cursor.past_end = count is None or len(new) < count
                tag = f"FETCH {len(new)}"
            upstream.local(b"".join(rows) + codec.command_complete(tag))
        upstream.local(codec.ready_for_query(fetched.status))

    async def _close(self, cursor: Cursor, sql: str) -> None:
        """``CLOSE c``: the stream stops once PostgreSQL has closed its cursor."""
        closed = self.engine.upstream.query(sql, EVERYTHING)
        self.engine.upstream.push()
        await closed
        if closed.error is None:
            self._forget(cursor)

    async def _hand_over(self, cursors: list[Cursor], *, extended: bool) -> bool:
        """Declare each cursor again in PostgreSQL over all of its rows, moved to where
        the client is; True when that failed and the client has been told."""
        upstream = self.engine.upstream
        if upstream.status != b"T":
            return False  # PostgreSQL refuses the message, or the cursors are gone
        for cursor in cursors:
            self._forget(cursor, stop=False)
            if not (await self._ours(cursor)):
                cursor.live.stop()
                continue
            await cursor.live.wait(None)
            if cursor.live.error is not None:
                _fail(self.engine, cursor.live.error, extended=extended)
                return True
            params = list(cursor.params)
            params[cursor.live.param] = values.text_array_literal(
                [None if r is None else r.decode(encoding.current()) for r in cursor.live.rows]
            ).encode(encoding.current())
            requests = [
                upstream.statement(f"CLOSE {cursor.spelled}", name=_HELPER),
                upstream.statement(
                    cursor.statement, params, cursor.oids, cursor.formats, name=_HELPER
                ),
            ]
            if cursor.delivered or cursor.past_end:
                where = "ALL" if cursor.past_end else str(cursor.delivered)
                requests.append(
                    upstream.statement(f"MOVE FORWARD {where} IN {cursor.spelled}", name=_HELPER)
                )
            upstream.flush()
            try:
                for request in requests:
                    await request
            except (ServerError, Skipped) as error:
                log.error("could not hand cursor %s over", cursor.name, exc_info=error)
                _fail(self.engine, error, extended=extended)
                return True
        return False

    def _check(self, cursor: Cursor) -> Reply:
        return self.engine.upstream.statement(
            _OURS,
            [cursor.name.encode(encoding.current()), cursor.statement.encode(encoding.current())],
            [values.TEXT_OID, values.TEXT_OID],
            name=_HELPER,
        )

    async def _ours(self, cursor: Cursor) -> bool:
        reply = self._check(cursor)
        self.engine.upstream.flush()
        return bool((await reply).rows)

    def _forget(self, cursor: Cursor, *, stop: bool = True) -> None:
        if self.open.get(cursor.name) is cursor:
            del self.open[cursor.name]
            del self._keys[cursor.name]
        if stop:
            cursor.live.stop()


def _fail(engine: Engine, error: Exception, *, extended: bool) -> None:
    """The client's message fails with ``error``, as a pgml statement's error fails it."""
    errors.report(engine.upstream, error, held=extended)
    if not extended:
        engine.upstream.sync(EVERYTHING)


def _count(direction: str | None) -> int | None:
    """How many rows a forward FETCH asks for (None: all)."""
    if direction is None:
        return 1
    words = direction.split()
    last = words[-1].upper()
    if last == "ALL":
        return None
    if last in ("NEXT", "FORWARD"):
        return 1
    return int(last)


def _normal(spelled: str) -> str:
    """A cursor's name as PostgreSQL stores it."""
    if spelled.startswith('"'):
        return spelled[1:-1].replace('""', '"')
    return spelled.lower()
