"""What a pgml function is: its SQL signatures (:class:`Function`, :class:`Overload`,
:class:`Param`), the argument types they take, and what a handler is given
(:class:`CallContext`, a batch of :data:`Args`).

Adding a function is declaring its :class:`Function` in :mod:`handlers.registry` and
writing its handler: the planner resolves calls against these signatures and the executor
calls the handler with batches of argument tuples.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from handlers.errors import PgmlError, statement_cancelled

TEXT_OIDS = frozenset({25, 1043, 1042, 19, 705})
"""text, varchar, bpchar, name, unknown."""
TEXT_ARRAY_OIDS = frozenset({1009, 1015, 1014})
JSON_ARRAY_OIDS = frozenset({3807, 199})
"""jsonb[], json[]."""
INTEGER_OIDS = frozenset({20, 21, 23})
NUMBER_OIDS = INTEGER_OIDS | {700, 701, 1700}
NUMBER_ARRAY_OIDS = frozenset({1021, 1022, 1005, 1007, 1016, 1231, 1000})
"""real[], double precision[], smallint[], integer[], bigint[], numeric[], boolean[]."""
JSON_OIDS = frozenset({114, 3802}) | TEXT_OIDS
BOOLEAN_OIDS = frozenset({16}) | TEXT_OIDS

ACCEPTED_OIDS: dict[str, frozenset[int]] = {
    "text": TEXT_OIDS,
    "text[]": TEXT_ARRAY_OIDS,
    "jsonb[]": JSON_ARRAY_OIDS,
    "real[]": NUMBER_ARRAY_OIDS,
    "bigint": INTEGER_OIDS,
    "real": NUMBER_OIDS,
    "jsonb": JSON_OIDS,
    "boolean": BOOLEAN_OIDS,
}
"""Argument types each parameter type takes, as PostgreSQL's implicit casts would."""
RECORD_OID = 2249
FIRST_USER_OID = 16384
"""Types created in a database (a table's row type among them) have OIDs from here on."""


def accepts_oid(kind: str, oid: int) -> bool:
    """Whether a parameter of type ``kind`` takes an argument of type ``oid``: ``record``
    takes an anonymous row and a table's (any type created in the database)."""
    if kind == "record":
        return oid == RECORD_OID or oid >= FIRST_USER_OID
    return oid in ACCEPTED_OIDS[kind]


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: str
    default: Any = None
    required: bool = True


Args = tuple[Any, ...]
Handler = Callable[["CallContext", Sequence[Args]], Awaitable[list[Any]]]
"""Gets a batch of argument tuples (no NULLs), returns one result per tuple: a value,
or for set-returning functions a list of rows."""
Stream = Callable[["CallContext", Args], AsyncIterator[Any]]
"""One call's rows as they are produced (a set-returning function that streams)."""
Authorize = Callable[["CallContext", Args], Awaitable[None]]
"""Raises when the caller may not make the call (see ``Overload.authorize``)."""


@dataclass(frozen=True, slots=True)
class Overload:
    params: tuple[Param, ...]
    returns: str
    """SQL type of the value, or of each row's column for ``columns``."""
    handler: Handler
    set_returning: bool = False
    columns: tuple[tuple[str, str], ...] = ()
    """``TABLE(...)`` result columns: (name, SQL type)."""
    row_dependent_ok: bool = True
    """Whether arguments may read columns (evaluated per row in batches).  Such handlers
    must not use ``CallContext.session``: the next batch is fetched while they run."""
    strict: bool = True
    """NULL in any argument gives NULL without calling the handler, as STRICT functions do."""
    varies: Callable[[Sequence[Any]], bool] | None = None
    """Whether results may differ between calls with the same arguments (sampling), given
    the call's arguments (None for those read per row).  Per-row calls that vary are
    evaluated for every row; the others once per distinct argument tuple."""
    stream: Stream | None = None
    """For a set-returning overload: its rows while they are produced, for an engine that
    sends rows before the call ends.  Closing the iterator early stops the work; its
    ``handler`` gives the same rows collected."""
    authorize: Authorize | None = None
    """Awaited in the caller's session (``CallContext.session`` may be used) before the
    handler runs on a call's arguments, with the arguments in parameter order: once with
    those that read columns as None, then for each new value the rows give the first
    parameter (the project a call is about) when it reads columns."""

    def accepts(self, type_oids: Sequence[int | None]) -> bool:
        return all(
            oid is None or accepts_oid(param.type, oid)
            for param, oid in zip(self.params, type_oids, strict=False)
        )


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    overloads: tuple[Overload, ...]

    def parameter_names(self) -> set[str]:
        return {p.name for o in self.overloads for p in o.params}


class SessionSQL(Protocol):
    """SQL in the caller's own session: their privileges, transaction and temp tables."""

    async def run_sql(self, sql: str, params: Sequence[str | None] = ()) -> list[list[Any]]:
        """Run one statement; its rows as text values."""
        ...

    async def check(self, sql: str, params: Sequence[str | None], key: Hashable) -> None:
        """Run a statement that raises when the caller may not go on.  The first check
        of ``key`` in the session runs now (its error raised here); later ones go with
        the next statement the proxy sends, and their error is the statement's."""
        ...

    async def copy_in(self, sql: str, chunks: AsyncIterator[bytes]) -> int:
        """Run ``COPY ... FROM STDIN`` fed with ``chunks``; return the rows copied."""
        ...

    def copy_out(self, sql: str) -> AsyncIterator[bytes]:
        """Run ``COPY ... TO STDOUT``; its data as it arrives, one CopyData payload each
        (read the iterator to the end, or close it to stop early)."""
        ...

    async def notice(self, message: str) -> None:
        """Send the client a NOTICE now (psql prints it while the statement runs)."""
        ...


@dataclass
class CallContext:
    """What a handler may use: the proxy's shared services and the caller's session."""

    services: Any
    session: SessionSQL
    database: str = ""
    cancelled: Callable[[], bool] = lambda: False
    caller: str = ""
    """The session's login role: whose share of the proxy's capacity a call uses."""

    def check_cancel(self) -> None:
        if self.cancelled():
            raise statement_cancelled()


def describe_call(name: str, type_names: Sequence[str]) -> str:
    return f"pgml.{name}({', '.join(type_names)})"


def no_such_function(name: str, type_names: Sequence[str], function: Function) -> PgmlError:
    signatures = "; ".join(
        describe_call(name, [f"{p.name} {p.type}" for p in o.params]) for o in function.overloads
    )
    return PgmlError(
        "42883",
        f"function {describe_call(name, type_names)} does not exist",
        hint=f"Available: {signatures}.",
    )
