"""pgml statements through the extended query protocol (Parse, Bind, Describe, Execute).

The proxy keeps the session's pgml prepared statements and portals itself and answers
the client's messages about them; every other message of the batch is relayed at once,
in order, and the reply queue puts every answer in its place.  A pgml statement is
described when it is parsed (its calls replaced by typed NULLs), and evaluated when its
portal first runs; the statement that replaces it then runs in an upstream portal of its
own, so row limits and suspended portals are PostgreSQL's.  When PostgreSQL skips the
rest of a failed batch, the proxy's answers for it are skipped too.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from handlers.functions import PgmlError
from proxy.engine import analysis, errors, extension, pipeline, planner
from proxy.engine.calls import mentions_sql_function
from proxy.engine.inline import result_formats
from proxy.engine.labels import label_types
from proxy.engine.names import own
from proxy.engine.planner import Parsed, TooDeep, depth_verdict
from proxy.engine.prepared import Execute
from proxy.engine.query import ensure_catalog
from proxy.engine.sessionsql import BoundParams
from proxy.engine.streams import streamable
from proxy.wire import codec, encoding
from proxy.wire.codec import Backend, Frontend, Message, MessageFormatError

if TYPE_CHECKING:
    from proxy.engine.session import Engine

_UPSTREAM_NAMES = itertools.count(1)
FINAL_NAME = own("final")
HELPER_NAME = own("h")
"""The prepared statement the proxy's helper SQL uses in extended-protocol sessions: the
client's unnamed statement is the client's."""


IN_FAILED_TRANSACTION = PgmlError(
    "25P02", "current transaction is aborted, commands ignored until end of transaction block"
)


@dataclass(eq=False)
class PgmlStatement:
    name: str
    parsed: Parsed | extension.ExtensionCommand | Execute
    parameter_oids: list[int]
    row_description: bytes | None
    label_types: dict[str, str]
    """Result types of project-typed calls, as described (see ``skeleton``)."""


@dataclass(eq=False)
class PgmlPortal:
    name: str
    statement: PgmlStatement
    params: BoundParams
    result_formats: list[int]
    bound_after: int
    """Sync points written before it was bound: it ends with the transaction after them."""
    upstream: str | None = None
    """The upstream portal running the statement in its place, once started."""
    finished: bool = False
    """The proxy has sent all of its rows itself (see :mod:`proxy.engine.inline`)."""


@dataclass
class ExtendedState:
    """A session's pgml prepared statements and portals, and answers about them."""

    engine: Engine
    statements: dict[str, PgmlStatement] = field(default_factory=dict)
    portals: dict[str, PgmlPortal] = field(default_factory=dict)

    def wants(self, message: Message) -> bool:
        """Whether the proxy answers this client message itself (the session has already
        taken Parse messages that mention pgml)."""
        self._forget_ended()
        kind, body = message.type, message.body
        text = self.engine.text_codec()
        name = codec.leading_name(body, text)
        if kind == Frontend.PARSE:
            if name and name in self.statements:
                return True
            self.statements.pop(name, None)  # a plain statement replaces ours
            return False
        if kind == Frontend.BIND:
            statement = codec.leading_name(body[body.find(b"\x00") + 1 :], text)
            if statement in self.statements:
                return True
            self.portals.pop(name, None)
            return False
        if kind in (Frontend.DESCRIBE, Frontend.CLOSE):
            target = codec.leading_name(body[1:], text)
            return target in (self.statements if body[:1] == b"S" else self.portals)
        if kind == Frontend.EXECUTE:
            return name in self.portals
        return False

    def forget_unnamed(self) -> None:
        """A simple Query destroys the unnamed statement and portal."""
        self.statements.pop("", None)
        self.portals.pop("", None)

    def _forget_ended(self) -> None:
        """Portals do not outlive the transaction they were bound in."""
        idle = self.engine.upstream.queue.idle_through
        for name in [n for n, p in self.portals.items() if idle > p.bound_after]:
            del self.portals[name]

    # --- answering ---------------------------------------------------------------------

    async def answer(self, message: Message) -> None:
        with errors.told(self.engine.upstream, held=True):
            await self._answer(message)

    def fail(self, error: PgmlError) -> None:
        """Report an error of the proxy's and put PostgreSQL's batch in error too."""
        errors.refuse(self.engine.upstream, error, held=True)

    async def _answer(self, message: Message) -> None:
        kind, body = message.type, message.body
        if kind == Frontend.PARSE:
            try:
                parse = await planner.by_size(len(body), codec.decode_parse, body)
            except (MessageFormatError, UnicodeDecodeError):  # PostgreSQL's to refuse
                self._relay(message)
                return
            await self._parse(parse, message)
        elif kind == Frontend.BIND:
            self._bind(codec.decode_bind(body, self._check_bind))
        elif kind == Frontend.DESCRIBE:
            self._describe(codec.decode_target(body, "DESCRIBE"))
        elif kind == Frontend.EXECUTE:
            await self._execute(codec.decode_execute(body))
        elif kind == Frontend.CLOSE:
            self._close(codec.decode_target(body, "CLOSE"))

    async def _parse(self, parse: codec.ParseMessage, message: Message) -> None:
        upstream = self.engine.upstream
        if parse.name and parse.name in self.statements:
            raise PgmlError("42P05", f'prepared statement "{parse.name}" already exists')
        try:
            parsed = await planner.parse(parse.sql)
        except TooDeep:
            raise await depth_verdict(upstream, parse.sql, parse.param_oids) from None
        if upstream.status == b"E":  # PostgreSQL refuses it (25P02) before anything runs
            self._relay(message)
            return
        if parsed is None:  # mentions pgml but calls none of the proxy's functions
            command = extension.recognise(parse.sql)
            if command is not None:
                self.statements[parse.name] = PgmlStatement(parse.name, command, [], None, {})
                upstream.local(codec.PARSE_COMPLETE, held=True)
                return
            execute = self.engine.prepared.recognise(parse.sql)
            if execute is not None:  # of a kept statement: described as PostgreSQL runs it
                result = await analysis.describe_text(upstream, parse.sql, parse.param_oids)
                self.statements[parse.name] = PgmlStatement(
                    parse.name, execute, result.parameter_oids, result.row_description, {}
                )
                upstream.local(codec.PARSE_COMPLETE, held=True)
                return
            if mentions_sql_function(parse.sql):
                await ensure_catalog(self.engine)
            self._relay(message)
            return
        if parsed.prepares:  # a utility statement: checked when it runs, as PostgreSQL does
            self.statements[parse.name] = PgmlStatement(parse.name, parsed, [], None, {})
            upstream.local(codec.PARSE_COMPLETE, held=True)
            return
        labels = await label_types(self.engine, parsed, HELPER_NAME)
        result = await analysis.describe(upstream, parsed, parse.param_oids, labels)
        self.statements[parse.name] = PgmlStatement(
            parse.name, parsed, result.parameter_oids, result.row_description, labels
        )
        upstream.local(codec.PARSE_COMPLETE, held=True)

    def _relay(self, message: Message) -> None:
        """A Parse PostgreSQL answers itself (it replaces a statement of that name)."""
        self.statements.pop(codec.leading_name(message.body, encoding.current()), None)
        self.engine.upstream.relay(message.raw, Frontend.PARSE)
        self.engine.upstream.push()

    def _check_bind(self, portal: str, name: str, count: int) -> None:
        """What PostgreSQL checks before it reads a Bind's values, in its order."""
        statement = self.statements[name]
        if count != len(statement.parameter_oids):
            raise PgmlError(
                "08P01",
                f"bind message supplies {count} parameters, but prepared statement "
                f'"{statement.name}" requires {len(statement.parameter_oids)}',
            )
        if self.engine.upstream.status == b"E":
            raise IN_FAILED_TRANSACTION
        if portal and portal in self.portals:
            raise PgmlError("42P03", f'cursor "{portal}" already exists')

    def _bind(self, bind: codec.BindMessage) -> None:
        statement = self.statements[bind.statement]
        params = BoundParams(bind.values, bind.formats, statement.parameter_oids)
        self.portals[bind.portal] = PgmlPortal(
            bind.portal,
            statement,
            params,
            bind.result_formats,
            self.engine.upstream.queue.pushed_syncs,
        )
        self.engine.upstream.local(codec.BIND_COMPLETE, held=True)

    def _describe(self, target: codec.Target) -> None:
        if target.kind == b"S":
            statement = self.statements[target.name]
            answer = codec.parameter_description(statement.parameter_oids)
            description, formats = statement.row_description, [0]
        else:
            portal = self.portals[target.name]
            answer = b""
            description, formats = portal.statement.row_description, portal.result_formats
        if description is None:
            answer += codec.NO_DATA
        else:
            answer += codec.row_description_with_formats(description, formats)
        self.engine.upstream.local(answer, held=True)

    async def _execute(self, execute: codec.ExecuteMessage) -> None:
        upstream = self.engine.upstream
        portal = self.portals[execute.portal]
        if portal.finished:  # as PostgreSQL answers a portal run to its end
            upstream.local(codec.command_complete("SELECT 0"), held=True)
            return
        if portal.upstream is not None:  # PostgreSQL's portal goes on
            upstream.execute(portal.upstream, execute.max_rows, pipeline.FINAL_ROWS)
            upstream.flush()
            return
        parsed = portal.statement.parsed
        if isinstance(parsed, extension.ExtensionCommand):
            await extension.run(self.engine, parsed, helper=HELPER_NAME, held=True)
            return
        params = portal.params
        if isinstance(parsed, Parsed) and parsed.prepares:
            await self._prepare(portal, parsed)
            return
        labels: dict[str, str] | None = portal.statement.label_types
        if isinstance(parsed, Execute):  # a kept statement, with its arguments evaluated
            binding = self.engine.execution(params=params, helper=HELPER_NAME)
            kept = await self.engine.prepared.bind(binding, parsed)
            if kept is None:  # PostgreSQL's own statement of that name now
                await self._as_written(portal, parsed.text, execute.max_rows)
                return
            (parsed, params), labels = kept, None
        execution = self.engine.execution(
            params=params, label_types=labels, helper=HELPER_NAME, drop_at_commit=True
        )
        execution.may_stream = streamable(parsed) and (
            parsed.declares_cursor or execute.max_rows == 0
        )
        width = codec.column_count(portal.statement.row_description)
        formats = result_formats(portal.result_formats, width)
        execution.may_inline = execute.max_rows == 0 and formats is not None
        target = pipeline.Target(
            FINAL_NAME, _upstream_portal(), portal.result_formats, execute.max_rows
        )
        try:
            await pipeline.run(self.engine, execution, parsed, target)
        except BaseException:
            execution.abandon()
            raise
        finally:
            portal.finished = execution.inline is not None
            if target.started:  # PostgreSQL's portal goes on
                portal.upstream = target.portal
        upstream.flush()

    async def _prepare(self, portal: PgmlPortal, parsed: Parsed) -> None:
        """``PREPARE name AS`` a statement that calls pgml functions, in the portal's place."""
        target = pipeline.Target(FINAL_NAME, _upstream_portal(), portal.result_formats)
        try:
            execution = self.engine.execution(helper=HELPER_NAME)
            await pipeline.prepare(self.engine, execution, parsed, target)
        finally:
            if target.started:
                portal.upstream = target.portal

    async def _as_written(self, portal: PgmlPortal, text: str, max_rows: int) -> None:
        """A statement PostgreSQL runs as the client wrote it, with the portal's values."""
        target = pipeline.Target(FINAL_NAME, _upstream_portal(), portal.result_formats, max_rows)
        upstream = self.engine.upstream
        await pipeline.start(upstream, text, portal.params, target, pipeline.FINAL_ROWS)
        portal.upstream = target.portal
        upstream.flush()

    def _close(self, target: codec.Target) -> None:
        upstream = self.engine.upstream
        if target.kind == b"S":
            self.statements.pop(target.name, None)
            upstream.local(codec.CLOSE_COMPLETE, held=True)
            return
        portal = self.portals.pop(target.name)
        if portal.upstream is None:
            upstream.local(codec.CLOSE_COMPLETE, held=True)
            return
        upstream.request(
            codec.close(b"P", portal.upstream),
            Frontend.CLOSE,
            frozenset({Backend.CLOSE_COMPLETE, Backend.ERROR}),
        )
        upstream.flush()


def _upstream_portal() -> str:
    """A name for an upstream portal in the place of a client's."""
    return own(f"portal_{next(_UPSTREAM_NAMES)}")
