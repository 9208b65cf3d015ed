"""SQL-level ``PREPARE`` and ``EXECUTE`` of a statement that calls pgml functions.

PostgreSQL keeps the statement under its name as its skeleton (each call a typed NULL of
its result type, see :func:`planner.skeleton`): it checks it, reserves the name, lists it
in ``pg_prepared_statements``, and ``DEALLOCATE`` and ``DISCARD`` drop it as any other.
The proxy keeps the statement itself.  ``EXECUTE`` runs it through the engine with its
arguments as the statement's parameters, once PostgreSQL shows that it still holds the
skeleton the proxy prepared; else the name was deallocated (and perhaps prepared again),
and the ``EXECUTE`` is PostgreSQL's.  Through the extended protocol (as asyncpg sends
every statement) a ``PREPARE`` is run the same way when its portal runs, and an
``EXECUTE`` is described by PostgreSQL and run the same way.  An
``EXECUTE`` of a kept name inside another statement is refused, so the skeleton never
runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlglot import Token, TokenType
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import TokenError

from handlers.functions import PgmlError, unsupported
from proxy.engine import values
from proxy.engine.labels import label_types
from proxy.engine.planner import (
    PREPARE,
    Parsed,
    by_size,
    off_loop,
    only_explains,
    parse_statement,
    skeleton,
)
from proxy.engine.sessionsql import BoundParams
from proxy.engine.sourcetext import without_literals

if TYPE_CHECKING:
    from proxy.engine.executor import Execution
    from proxy.engine.session import Engine

_EXECUTE = re.compile(r"(?:\s|--[^\n]*\n|/\*.*?\*/)*EXECUTE\s+", re.IGNORECASE | re.DOTALL)
_EXECUTE_BYTES = re.compile(rb"EXECUTE", re.IGNORECASE)
_EXECUTE_INSIDE = re.compile(r"\bEXECUTE\s+(\"(?:[^\"]|\"\")+\"|[^\s(\";]+)", re.IGNORECASE)
_HELD = (
    "SELECT statement, array_to_json(parameter_types::oid[])::text, "
    "array_to_json(parameter_types::text[])::text FROM pg_prepared_statements WHERE name = $1"
)


@dataclass(frozen=True)
class Execute:
    """``EXECUTE name [(arguments)]`` of a statement the proxy keeps."""

    name: str
    arguments: list[str]
    text: str


@dataclass(frozen=True)
class _Kept:
    prepared_as: str
    """The ``PREPARE`` PostgreSQL holds, as ``pg_prepared_statements`` shows it."""
    body: str
    """The statement, as the client wrote it."""


def folded(name: str) -> str:
    """A name as PostgreSQL reads it: quoted as written, else in lower case."""
    if name.startswith('"'):
        return name[1:-1].replace('""', '"')
    return name.lower()


class PreparedStatements:
    """A session's SQL-level prepared statements that call pgml functions."""

    def __init__(self) -> None:
        self._kept: dict[str, _Kept] = {}

    async def prepare_sql(
        self, engine: Engine, execution: Execution, parsed: Parsed
    ) -> tuple[str, str]:
        """The statement's name and the ``PREPARE`` of its skeleton to send PostgreSQL,
        the calls' overloads picked with the declared parameter types."""
        match = PREPARE.match(parsed.prepares)
        assert match is not None
        oids: list[int] = []
        if match["types"]:
            declared = _split_types(match["types"][1:-1])
            asked = ", ".join(f"to_regtype(${i})::oid" for i in range(1, len(declared) + 1))
            (found,) = await execution.run_sql(f"SELECT {asked}", declared)
            oids = [int(oid or 0) for oid in found]
        labels = await label_types(engine, parsed, "")
        sql = await by_size(len(parsed.text), skeleton, parsed, oids, labels)
        return folded(match["name"]), sql

    def named_in(self, message: bytes) -> bool:
        """Whether a client message may ``EXECUTE`` a statement the proxy keeps (then the
        engine reads it)."""
        return bool(self._kept) and _EXECUTE_BYTES.search(message) is not None

    def keep(self, name: str, prepared_as: str, body: str) -> None:
        """PostgreSQL prepared ``prepared_as`` under ``name``: the statement is ``body``."""
        self._kept[name] = _Kept(prepared_as, body)

    def recognise(self, text: str) -> Execute | None:
        """An ``EXECUTE`` of a statement the proxy keeps, to run; None for any other
        statement (PostgreSQL's).  Refused where such an ``EXECUTE`` is part of another
        statement (``CREATE TABLE ... AS EXECUTE``, ``EXPLAIN ANALYZE EXECUTE``), which
        PostgreSQL would run over the skeleton; a plain ``EXPLAIN`` of it is
        PostgreSQL's (the skeleton's plan)."""
        if not self._kept:
            return None
        head = _EXECUTE.match(text)
        if head is None:
            inside = _EXECUTE_INSIDE.search(without_literals(text))
            if inside is None or folded(inside[1]) not in self._kept:
                return None
            if only_explains(text):
                return None
            raise unsupported(
                f'prepared statement "{folded(inside[1])}" calls pgml functions: EXECUTE it '
                "as a statement of its own",
                hint="Store its rows with INSERT ... SELECT or CREATE TABLE ... AS SELECT, "
                "the calls in the SELECT.",
            )
        return self._execute(text, head.end())

    def _execute(self, text: str, start: int) -> Execute | None:
        try:
            tokens = Postgres().tokenize(text[start:])
        except TokenError:
            return None
        name = folded(_spelled(text, start, tokens[0])) if tokens else ""
        if name not in self._kept:
            return None
        rest = [t for t in tokens[1:] if t.token_type != TokenType.SEMICOLON]
        if not rest:
            return Execute(name, [], text)
        if rest[0].token_type != TokenType.L_PAREN:
            raise _syntax_error(rest[0])
        arguments: list[str] = []
        depth = 0
        first = rest[0].end + 1
        for index, token in enumerate(rest[1:], start=1):
            kind = token.token_type
            if kind in (TokenType.L_PAREN, TokenType.L_BRACKET):
                depth += 1
            elif kind in (TokenType.R_PAREN, TokenType.R_BRACKET):
                depth -= 1
            if (kind == TokenType.COMMA and depth == 0) or depth < 0:
                argument = text[start + first : start + token.start].strip()
                if not argument:
                    raise _syntax_error(token)
                arguments.append(argument)
                first = token.end + 1
            if depth < 0:  # the list's closing parenthesis: the statement ends there
                if index + 1 < len(rest):
                    raise _syntax_error(rest[index + 1])
                return Execute(name, arguments, text)
        raise PgmlError("42601", "syntax error at end of input")

    async def bind(
        self, execution: Execution, command: Execute
    ) -> tuple[Parsed, BoundParams] | None:
        """The kept statement and its parameters: the arguments, each evaluated once by
        PostgreSQL and cast to its parameter's type; None when PostgreSQL no longer holds
        the skeleton (the name was deallocated: the ``EXECUTE`` is PostgreSQL's)."""
        kept = self._kept[command.name]
        found = await execution.run_sql(_HELD, [command.name])
        if not found or found[0][0] != kept.prepared_as:
            del self._kept[command.name]
            return None
        oids = [int(oid) for oid in json.loads(found[0][1])]
        types: list[str] = json.loads(found[0][2])
        if len(command.arguments) != len(oids):
            raise PgmlError(
                "42601",
                f'wrong number of parameters for prepared statement "{command.name}"',
                detail=f"Expected {len(oids)} parameters but got {len(command.arguments)}.",
            )
        given: list[str | None] = []
        if oids:
            casts = ", ".join(
                f"CAST(({argument}) AS {kind})::text"
                for argument, kind in zip(command.arguments, types, strict=True)
            )
            (given,) = await execution.run_sql(f"SELECT {casts}")
        parsed = await off_loop(parse_statement, kept.body)
        assert parsed is not None  # it called pgml functions when it was prepared
        params = BoundParams(
            [None if v is None else values.client_bytes(v) for v in given], [0] * len(oids), oids
        )
        return parsed, params


def _split_types(listed: str) -> list[str]:
    """``PREPARE``'s type list, one type each (``numeric(10, 2)`` is one)."""
    types: list[str] = []
    depth = 0
    current = ""
    for char in listed:
        if char == "," and depth == 0:
            types.append(current.strip())
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current += char
    return [*types, current.strip()]


def _spelled(text: str, start: int, token: Token) -> str:
    return text[start + token.start : start + token.end + 1]


def _syntax_error(token: Token) -> PgmlError:
    return PgmlError("42601", f'syntax error at or near "{token.text}"')
