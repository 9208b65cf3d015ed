"""pgml statements through the extended query protocol (Parse, Bind, Describe, Execute).

A client batch that touches a pgml statement is taken over from the first such message
to the client's Sync: the proxy reads each client message in order, relays the plain
ones one at a time (each followed by Flush, its replies read to completion and passed
on) and answers the pgml ones itself, so every reply reaches the client in the order
its messages were sent.  After an error it skips to the Sync, as PostgreSQL does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from handlers.errors import PgmlError
from handlers.inference import result_type as project_result_type
from handlers.serving import Services
from proxy import protocol as pg
from proxy.executor import (
    INTERNAL_ERROR,
    PROXY_STATEMENTS,
    BoundParams,
    Execution,
    abort_transaction_sql,
    error_response,
    without_position,
)
from proxy.inband import (
    FLUSH,
    Inband,
    ServerError,
    encode_bind,
    encode_close,
    encode_describe,
    encode_execute,
    encode_parse,
    read_values,
)
from proxy.planner import plan_statement, project_literals, skeleton_sql
from proxy.protocol import Message

log = logging.getLogger("pgml_proxy.extended")

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_RESULTS = frozenset(b"DCIs")
"""DataRow, CommandComplete, EmptyQueryResponse, PortalSuspended."""


@dataclass
class PgmlStatement:
    name: str
    sql: str
    parameter_oids: list[int]
    row_description: bytes | None
    label_types: dict[str, str]
    """Result types of project-typed calls, as described (see ``skeleton_sql``)."""


@dataclass
class PgmlPortal:
    name: str
    statement: PgmlStatement
    params: BoundParams
    result_formats: list[int]
    execution: Execution | None = None
    upstream: str | None = None
    done: bool = False
    unanswered: int = 0
    """Messages for the upstream portal sent but not yet answered (read with Execute's)."""


@dataclass
class BindMessage:
    portal: str
    statement: str
    values: list[bytes | None]
    formats: list[int]
    result_formats: list[int]


def parse_bind(body: bytes) -> BindMessage:
    portal, pos = _cstring(body, 0)
    statement, pos = _cstring(body, pos)
    formats, pos = _int16_list(body, pos)
    values, pos = read_values(body, pos)
    result_formats, _ = _int16_list(body, pos)
    count = len(values)
    per_param = formats * count if len(formats) == 1 else formats or [0] * count
    return BindMessage(portal, statement, values, per_param, result_formats)


def parse_parse(body: bytes) -> tuple[str, str, list[int]]:
    name, pos = _cstring(body, 0)
    sql, pos = _cstring(body, pos)
    count = _INT16.unpack_from(body, pos)[0]
    oids = list(struct.unpack_from(f"!{count}I", body, pos + 2))
    return name, sql, oids


def parse_target(body: bytes) -> tuple[bytes, str]:
    """Describe and Close: the kind (b"S" or b"P") and the name."""
    return body[:1], body[1:-1].decode("utf-8")


def _cstring(body: bytes, pos: int) -> tuple[str, int]:
    end = body.index(b"\x00", pos)
    return body[pos:end].decode("utf-8"), end + 1


def _int16_list(body: bytes, pos: int) -> tuple[list[int], int]:
    count = _INT16.unpack_from(body, pos)[0]
    return list(struct.unpack_from(f"!{count}h", body, pos + 2)), pos + 2 + 2 * count


def with_formats(row_description: bytes, formats: list[int]) -> bytes:
    """A RowDescription body with each column's format code set as a Bind asked."""
    count = _INT16.unpack_from(row_description)[0]
    out = bytearray(row_description)
    pos = 2
    for index in range(count):
        pos = out.index(b"\x00", pos) + 1 + 16
        code = formats[0] if len(formats) == 1 else (formats[index] if formats else 0)
        out[pos : pos + 2] = _INT16.pack(code)
        pos += 2
    return bytes(out)


@dataclass
class ExtendedState:
    """A session's pgml prepared statements and portals."""

    statements: dict[str, PgmlStatement] = field(default_factory=dict)
    portals: dict[str, PgmlPortal] = field(default_factory=dict)
    counter: int = 0

    def needs_proxy(self, message: Message) -> bool:
        """Whether the proxy must answer this client message itself."""
        kind, body = message.type, message.body
        if kind == pg.PARSE:
            name = body[: body.index(b"\x00")].decode("utf-8")
            if pg.PGML_PATTERN.search(body) is not None or (name and name in self.statements):
                return True
            self.statements.pop(name, None)  # a plain unnamed statement replaces ours
            return False
        if kind == ord("B"):
            bind = parse_bind(body)
            if bind.statement in self.statements:
                return True
            self.portals.pop(bind.portal, None)
            return False
        if kind in (ord("D"), ord("C")):
            target, name = parse_target(body)
            return name in (self.statements if target == b"S" else self.portals)
        if kind == ord("E"):
            return body[: body.index(b"\x00")].decode("utf-8") in self.portals
        return False


class TakeoverInput:
    """The client's messages during a takeover, framed one by one, in order."""

    def __init__(self, first: Message) -> None:
        self._framer = pg.MessageFramer(
            watched=pg.EVERY_TYPE, sync_types=b"QSF", step_types=b"PBDEC"
        )
        self._framer.syncs, self._framer.steps = first.syncs, first.steps + 1
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._queue.put_nowait(first)

    def feed(self, data: bytes) -> None:
        for chunk in self._framer.feed(data, pg.want_all) or ():
            if isinstance(chunk, Message):
                self._queue.put_nowait(chunk)

    async def next(self) -> Message:
        return await self._queue.get()

    def leftover(self) -> bytes:
        """What the client sent after the batch, to be relayed as usual."""
        messages = []
        while not self._queue.empty():
            messages.append(self._queue.get_nowait().raw)
        return b"".join(messages) + self._framer.reposition()


class Takeover:
    """Runs one client batch, from its first pgml message to its Sync."""

    def __init__(
        self,
        state: ExtendedState,
        inband: Inband,
        services: Services,
        cancelled: Callable[[], bool],
        database: str,
    ) -> None:
        self.state = state
        self.inband = inband
        self.services = services
        self.cancelled = cancelled
        self.database = database
        self.skipping = False

    async def handle(self, message: Message) -> None:
        """One client message of the batch (not the Sync)."""
        if self.skipping:
            return
        try:
            if message.type == ord("H"):
                self.inband.send(message.raw)
            elif self.state.needs_proxy(message):
                await self._answer(message)
            else:
                self.inband.send(message.raw + FLUSH)
                await self.inband.steps(1, forward=lambda m: True)
        except ServerError as error:
            self.inband.send_client(without_position(error))
            self.skipping = True
        except PgmlError as error:
            await self._fail(error)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("internal error running a pgml statement")
            await self._fail(INTERNAL_ERROR)

    async def finish(self, sync: Message) -> None:
        """The client's Sync: PostgreSQL's ReadyForQuery ends the batch."""
        self.inband.send(sync.raw)
        while True:
            message = await self.inband.receive()
            self.inband.send_client(message.raw)
            if message.type == pg.READY_FOR_QUERY:
                break
        if self.skipping:  # a failure may have left the proxy's statements open
            await self.inband.close_statements(PROXY_STATEMENTS)

    async def _fail(self, error: PgmlError) -> None:
        """Report an error of the proxy's and put PostgreSQL's transaction in error too."""
        self.inband.send_client(error_response(error))
        self.inband.send(
            encode_parse("__pgml_abort", abort_transaction_sql())
            + encode_bind("__pgml_abort", "__pgml_abort", [])
            + encode_execute("__pgml_abort")
            + FLUSH
        )
        with contextlib.suppress(ServerError):
            await self.inband.steps(3)
        self.skipping = True

    async def _answer(self, message: Message) -> None:
        kind = message.type
        if kind == pg.PARSE:
            await self._parse(message.body)
        elif kind == ord("B"):
            self._bind(parse_bind(message.body))
        elif kind == ord("D"):
            self._describe(*parse_target(message.body))
        elif kind == ord("E"):
            name = message.body[: message.body.index(b"\x00")].decode("utf-8")
            max_rows = _INT32.unpack_from(message.body, len(name) + 1)[0]
            await self._execute(self.state.portals[name], max_rows)
        elif kind == ord("C"):
            await self._close(*parse_target(message.body))

    async def _parse(self, body: bytes) -> None:
        name, sql, oids = parse_parse(body)
        if name and name in self.state.statements:
            raise PgmlError("42P05", f'prepared statement "{name}" already exists')
        plan = plan_statement(sql)
        if plan is None:  # mentions pgml but calls none of its functions
            self.state.statements.pop(name, None)  # a plain unnamed statement replaces ours
            self.inband.send(pg.message(b"P", body) + FLUSH)
            await self.inband.steps(1, forward=lambda m: True)
            return
        label_types = await self._label_types(sql)
        skeleton = skeleton_sql(sql, oids, label_types)
        self.inband.send(
            encode_parse("__pgml_describe", skeleton, oids)
            + encode_describe(b"S", "__pgml_describe")
            + encode_close(b"S", "__pgml_describe")
            + FLUSH
        )
        results = await self.inband.steps(3)
        described = results[0]
        self.state.statements[name] = PgmlStatement(
            name, sql, described.parameter_oids, described.row_description, label_types
        )
        self.inband.send_client(pg.message(b"1"))

    async def _label_types(self, sql: str) -> dict[str, str]:
        """Result types of the projects the statement names literally; a project that
        does not exist (yet) is left out, and its calls fail when they run."""
        found: dict[str, str] = {}
        for project in project_literals(sql):
            with contextlib.suppress(PgmlError):
                found[project] = await project_result_type(self.services, self.database, project)
        return found

    def _bind(self, bind: BindMessage) -> None:
        statement = self.state.statements[bind.statement]
        if len(bind.values) != len(statement.parameter_oids):
            raise PgmlError(
                "08P01",
                f"bind message supplies {len(bind.values)} parameters, but prepared statement "
                f'"{statement.name}" requires {len(statement.parameter_oids)}',
            )
        if bind.portal and bind.portal in self.state.portals:
            raise PgmlError("42P03", f'cursor "{bind.portal}" already exists')
        params = BoundParams(bind.values, bind.formats, statement.parameter_oids)
        self.state.portals[bind.portal] = PgmlPortal(
            bind.portal, statement, params, bind.result_formats
        )
        self.inband.send_client(pg.message(b"2"))

    def _describe(self, target: bytes, name: str) -> None:
        if target == b"S":
            statement = self.state.statements[name]
            oids = statement.parameter_oids
            self.inband.send_client(
                pg.message(b"t", struct.pack(f"!h{len(oids)}I", len(oids), *oids))
            )
            description, formats = statement.row_description, [0]
        else:
            portal = self.state.portals[name]
            description, formats = portal.statement.row_description, portal.result_formats
        if description is None:
            self.inband.send_client(pg.message(b"n"))
        else:
            self.inband.send_client(pg.message(b"T", with_formats(description, formats)))

    async def _execute(self, portal: PgmlPortal, max_rows: int) -> None:
        if portal.done:
            raise PgmlError("55000", f'portal "{portal.name}" has already run to completion')
        if portal.execution is None:
            await self._start(portal)
        assert portal.upstream is not None
        whole = max_rows == 0  # it cannot stop half-way: close the portal at once
        self.inband.send(
            encode_execute(portal.upstream, max_rows)
            + (encode_close(b"P", portal.upstream) if whole else b"")
            + FLUSH
        )
        expected, portal.unanswered = portal.unanswered + 1 + whole, 0
        (result,) = await self.inband.steps(expected, forward=lambda m: m.type in _RESULTS)
        if whole:
            portal.upstream = None
        if not result.suspended:
            await self._finish_portal(portal)

    async def _start(self, portal: PgmlPortal) -> None:
        plan = plan_statement(portal.statement.sql)
        assert plan is not None
        execution = Execution(
            self.inband,
            self.services,
            self.cancelled,
            portal.params,
            self.database,
            drop_on_commit=True,
            label_types=portal.statement.label_types,
        )
        portal.execution = execution
        final = await execution.evaluate(plan)
        self.state.counter += 1
        upstream = f"__pgml_portal_final_{self.state.counter}"
        self.inband.send(
            encode_parse(upstream, final, execution.param_oids())
            + encode_bind(
                upstream,
                upstream,
                execution.param_values(),
                execution.param_formats(),
                portal.result_formats,
            )
            + encode_close(b"S", upstream)
        )
        portal.unanswered = 3  # answered with the Execute that follows
        portal.upstream = upstream

    async def _finish_portal(self, portal: PgmlPortal) -> None:
        portal.done = True
        if portal.execution is not None:  # it may have started in an earlier batch
            portal.execution.inband = self.inband
        if portal.upstream is not None:
            self.inband.send(encode_close(b"P", portal.upstream) + FLUSH)
            await self.inband.steps(1)
            portal.upstream = None
        if portal.execution is not None:
            await portal.execution.drop_temp_tables()

    async def _close(self, target: bytes, name: str) -> None:
        if target == b"S":
            self.state.statements.pop(name, None)
        else:
            portal = self.state.portals.pop(name)
            if not portal.done:
                await self._finish_portal(portal)
        self.inband.send_client(pg.message(b"3"))

    def end_of_transaction(self) -> None:
        """Portals do not outlive the transaction they were bound in."""
        self.state.portals.clear()
