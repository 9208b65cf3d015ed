"""Statements that call pgml functions: parsed once per text, and the SQL that stands in
for each call.

The proxy never sends a pgml call to PostgreSQL.  Each call is evaluated by the proxy
and replaced in the statement's text, which PostgreSQL then runs as usual, so column
names, types, formats, command tags and transaction semantics are PostgreSQL's own:

* a call whose arguments read no column (a *constant* call) becomes a bound parameter
  (``$n::type``), or a derived table for a set-returning call in ``FROM``;
* calls whose arguments read columns are evaluated per row of their scope, which is then
  replaced by a query over the materialised rows (:mod:`proxy.engine.scopes`).
"""

from __future__ import annotations

import asyncio
import contextvars
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import ClassVar, TypeVar

from sqlglot import Token, TokenType, exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import ParseError, TokenError
from sqlglot.parsers.postgres import PostgresParser

from handlers.functions import FUNCTIONS, Overload, PgmlError, unsupported
from proxy.engine import merge, upsert
from proxy.engine.binding import pick_overload, positions, project_literal, result_type, syntax_oids
from proxy.engine.calls import CallSite, ancestors, contains, find_calls, mentions_call
from proxy.engine.names import own
from proxy.engine.parsecache import ParseCache
from proxy.engine.sourcetext import SourceText, nesting_depth, space_parameters, spaced
from proxy.engine.sqltext import SqlText
from proxy.engine.upstream import ServerError, Skipped, Upstream


class _Postgres(Postgres):
    """PostgreSQL's SQL, where the names of pgml functions that other systems define
    (``TRANSFORM``, ``PREDICT``, neither a function of PostgreSQL's) are plain functions
    of any arguments, so a call of them reads alike wherever it stands."""

    class Parser(PostgresParser):
        FUNCTIONS: ClassVar[dict[str, Callable[..., exp.Expr]]] = {
            name: build
            for name, build in PostgresParser.FUNCTIONS.items()
            if name not in ("TRANSFORM", "PREDICT")
        }


DIALECT = _Postgres()

T = TypeVar("T")

_PLANNER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pgml-plan")
"""Parsing and planning run here, off the event loop: a statement of megabytes or of
thousands of calls must not stall the other sessions."""


async def off_loop(work: Callable[..., T], *args: object) -> T:
    """``work(*args)`` in a planner thread, in the caller's context (its encoding)."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_PLANNER, context.run, work, *args)


BULK = 1 << 18
"""Characters (or bytes) from which even copying a statement's text is work for the
planner's threads: a copy of megabytes takes milliseconds."""


async def by_size(size: int, work: Callable[..., T], *args: object) -> T:
    """``work(*args)`` on the loop when it handles fewer than :data:`BULK` characters,
    else off it."""
    if size < BULK:
        return work(*args)
    return await off_loop(work, *args)


class TooDeep(Exception):
    """The statement nests more deeply than the proxy reads (sqlglot recurses)."""


TOO_DEEP = PgmlError(
    "54001",
    "stack depth limit exceeded",
    detail="pgml-proxy reads statements that call pgml functions nested up to about "
    "2,000 levels deep.",
    hint="Nest the expression less deeply.",
)
_PARSER_ERRORS = frozenset({"42601", "54001"})


async def depth_verdict(upstream: Upstream, sql: str, oids: Sequence[int] = ()) -> Exception:
    """The error for a statement too deep for the proxy: PostgreSQL's own when its
    parser refuses the text too (asked with a Parse, which runs nothing), else
    :data:`TOO_DEEP`."""
    upstream.parse(_CHECK, sql, oids)
    checked = upstream.close(b"S", _CHECK)
    upstream.flush()
    try:
        await checked
    except ServerError as error:
        if error.sqlstate in _PARSER_ERRORS and error.fields.get("M") != _SEVERAL:
            error.own_text = True
            return error
    except Skipped:
        pass
    return TOO_DEEP


_SEVERAL = "cannot insert multiple commands into a prepared statement"
"""A Parse of several statements: PostgreSQL's parser read them all."""


_CHECK = own("check")


async def parse(sql: str) -> Parsed | None:
    """:func:`parse_statement` off the loop, unless its text is parsed already."""
    kept = _kept(sql)
    if kept is not None:
        return kept[0]
    return await off_loop(parse_statement, sql)


def prepare_query(sql: str) -> list[tuple[Piece, Parsed | None]]:
    """A simple Query's statements, each parsed (None: it calls no pgml function)."""
    return [(piece, parse_statement(piece.text)) for piece in split_statements(sql)]


@dataclass(frozen=True, eq=False)
class Parsed:
    """One statement that calls pgml functions, parsed.  Shared through the cache: read
    it, never change it."""

    text: str
    """The statement (after any ``DECLARE ... CURSOR FOR``), ``$n`` spaced for sqlglot."""
    prefix: str
    """``DECLARE name ... CURSOR FOR`` before the query, kept as the client wrote it."""
    tree: exp.Expr
    sql: SqlText
    calls: tuple[CallSite, ...]
    explain: str = ""
    """``EXPLAIN [(options)]`` before the statement, as the client wrote it."""
    analyze: bool = False
    """EXPLAIN runs the statement (ANALYZE): its calls are evaluated."""
    without_data: bool = False
    """``CREATE TABLE ... AS ... WITH NO DATA``: the query is planned, never run."""
    prepares: str = ""
    """``PREPARE name [(types)] AS`` before the statement, as the client wrote it: the
    statement is kept under that name, not run (see :mod:`proxy.engine.prepared`)."""
    command: str = ""
    """The command the client wrote where the statement is another (``SELECT INTO``,
    run as ``CREATE TABLE AS``)."""

    @property
    def runs(self) -> bool:
        """Whether PostgreSQL runs the statement's query (so its calls are evaluated)."""
        return not self.without_data and not self.prepares and (self.analyze or not self.explain)

    @property
    def declares_cursor(self) -> bool:
        """A cursor reads the calls' results after the statement: they live to its end."""
        return bool(self.prefix)


@dataclass(frozen=True)
class Piece:
    """One statement of a simple Query, as the client wrote it."""

    text: str
    offset: int
    """Where it starts in the Query's text (error positions are counted from there)."""


def split_statements(sql: str) -> list[Piece]:
    """Split a simple Query's text into statements, as PostgreSQL's parser would."""
    text, inserted = spaced(sql)
    try:
        tokens = DIALECT.tokenize(text)
    except TokenError:
        return [Piece(sql, 0)]
    moved = [i + k for k, i in enumerate(inserted)]  # the spaces' places in ``text``

    def original(position: int) -> int:
        return position - sum(1 for m in moved if m < position)

    bounds: list[int] = []
    start = 0
    has_tokens = False
    for token in tokens:
        if token.token_type != TokenType.SEMICOLON:
            has_tokens = True
            continue
        if has_tokens or not bounds:
            bounds.append(token.end + 1)
        else:  # an empty statement: PostgreSQL ignores it
            bounds[-1] = token.end + 1
        start = token.end + 1
        has_tokens = False
    if text[start:].strip():
        if has_tokens or not bounds:
            bounds.append(len(text))
        else:  # only a comment after the last statement
            bounds[-1] = len(text)
    pieces: list[Piece] = []
    begin = 0
    for bound in bounds or [len(text)]:
        first, last = original(begin), original(bound)
        pieces.append(Piece(sql[first:last], first))
        begin = bound
    return pieces


_TRANSACTION_CONTROL = re.compile(
    r"^(?:\s|--[^\n]*\n|/\*.*?\*/)*(BEGIN|START|COMMIT|END|ROLLBACK|ABORT|SAVEPOINT|RELEASE|"
    r"PREPARE\s+TRANSACTION)\b",
    re.IGNORECASE | re.DOTALL,
)


def controls_transaction(statement: str) -> bool:
    return _TRANSACTION_CONTROL.match(statement) is not None


_DECLARE_CURSOR = re.compile(
    r"^\s*DECLARE\s+(?:\"(?:[^\"]|\"\")+\"|\w+)\s+(?:\w+\s+)*?CURSOR\s+"
    r"(?:(?:WITH|WITHOUT)\s+HOLD\s+)?FOR\s+",
    re.IGNORECASE,
)

_EXPLAIN = re.compile(
    r"^(?:\s|--[^\n]*\n|/\*.*?\*/)*EXPLAIN\s*(?:\((?:[^()]|\([^()]*\))*\)\s*|"
    r"(?:(?:ANALYZE|ANALYSE|VERBOSE)\s+)*)",
    re.IGNORECASE | re.DOTALL,
)
_OFF = frozenset({"false", "off", "0", "no"})

_NAME = r'"(?:[^"]|"")+"|[^\s("]+'
PREPARE = re.compile(
    rf"^(?:\s|--[^\n]*\n|/\*.*?\*/)*PREPARE\s+(?P<name>{_NAME})\s*"
    r"(?P<types>\((?:[^()]|\([^()]*\))*\))?\s*AS\s+",
    re.IGNORECASE | re.DOTALL,
)
"""SQL-level ``PREPARE name [(types)] AS`` before a statement."""
_WITH_NO_DATA = re.compile(r"\bWITH\s+NO\s+DATA\s*;?\s*$", re.IGNORECASE)


def only_explains(sql: str) -> bool:
    """Whether the statement is an EXPLAIN that plans without running (no ANALYZE)."""
    explained = _EXPLAIN.match(sql)
    return explained is not None and not _analyzes(explained.group(0))


def _analyzes(explain: str) -> bool:
    """Whether ``EXPLAIN ...`` runs the statement: ANALYZE given, and not turned off."""
    words = explain.strip()[len("EXPLAIN") :].strip()
    if not words.startswith("("):
        return any(w.upper() in ("ANALYZE", "ANALYSE") for w in words.split())
    for option in words.strip("() \t\r\n").split(","):
        name, _, value = option.strip().partition(" ")
        if name.upper() in ("ANALYZE", "ANALYSE"):
            return value.strip().strip("'").lower() not in _OFF
    return False


_BODY_STATEMENT = re.compile(
    r"^(?:\s|--[^\n]*\n|/\*.*?\*/)*(?:DO\b|CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE)\b)",
    re.IGNORECASE | re.DOTALL,
)

_cache: ParseCache[Parsed | None] = ParseCache(entries=512, weight=50_000)
"""Statements kept parsed, weighed by their tokens."""


def _kept(sql: str) -> tuple[Parsed | None, int] | None:
    """The cache's entry (the statement and its weight) for the text; texts of
    :data:`BULK` or more are never kept."""
    return _cache.get(sql) if len(sql) < BULK else None


def parse_statement(sql: str) -> Parsed | None:
    """The statement parsed; ``None`` when it calls no pgml function (relay it as it
    is).  Kept by text, so a statement run again is not parsed again."""
    kept = _kept(sql)
    if kept is not None:
        return kept[0]
    parsed = _parse(sql)
    if len(sql) < BULK:
        _cache.put(sql, parsed, len(parsed.sql.tokens) if parsed is not None else 1)
    return parsed


def _parse(sql: str) -> Parsed | None:
    if _BODY_STATEMENT.match(sql):
        if mentions_call(sql):
            raise unsupported(
                "pgml functions cannot be called inside a function body or DO block",
                hint="Call pgml functions in a top-level statement, e.g. "
                "INSERT INTO results SELECT pgml.predict(...) FROM ...",
            )
        return None
    sql = space_parameters(sql)
    explain = ""
    explained = _EXPLAIN.match(sql)
    if explained is not None:
        explain, sql = explained.group(0), sql[explained.end() :]
    prefix = ""
    declare = _DECLARE_CURSOR.match(sql)
    if declare is not None:
        prefix, sql = declare.group(0), sql[declare.end() :]
    prepares = ""
    prepare = None if explain or prefix else PREPARE.match(sql)
    if prepare is not None:
        prepares, sql = prepare.group(0), sql[prepare.end() :]
    try:
        read = _read(sql)
    except (ParseError, TokenError) as exc:
        if mentions_call(sql):
            raise PgmlError(
                "42601",
                "could not parse a statement that calls a pgml function",
                detail=str(exc).splitlines()[0],
                hint="Write the call in a plain SELECT, INSERT, UPDATE or CREATE TABLE AS.",
            ) from exc
        return None
    if read is None:
        raise TooDeep
    tokens, tree = read
    if tree is None:
        return None
    if isinstance(tree, exp.Command):
        if _calls_in_tokens(tokens):
            raise unsupported(
                f"pgml functions cannot be called in {tree.name.upper()} statements",
                hint="Run the pgml call in a SELECT of its own.",
            )
        return None
    calls = find_calls(tree, tokens)
    if not calls:
        return None
    over_proposed = [c for c in calls if c.upsert]
    if over_proposed and isinstance(tree, exp.Insert):
        rewritten = upsert.rewrite(SqlText(sql, tokens), tree, over_proposed)
        return _parse(explain + prepares + rewritten)
    in_actions = [c for c in calls if c.merge]
    if in_actions and isinstance(tree, exp.Merge):
        return _parse(explain + prepares + merge.rewrite(SqlText(sql, tokens), tree, in_actions))
    if isinstance(tree, exp.Select) and isinstance(tree.args.get("into"), exp.Into):
        created = _parse(explain + _as_create_table(SqlText(sql, tokens), tree, tree.args["into"]))
        return None if created is None else replace(created, command="SELECT INTO")
    if isinstance(tree, exp.Create) and str(tree.args.get("kind", "")).upper() == "VIEW":
        raise unsupported(
            "pgml functions cannot be called in a view definition",
            hint="Store the results with CREATE TABLE ... AS SELECT pgml...(...) FROM ..., "
            "then define the view over that table.",
        )
    without_data = isinstance(tree, exp.Create) and _WITH_NO_DATA.search(sql) is not None
    return Parsed(
        sql,
        prefix,
        tree,
        SqlText(sql, tokens),
        tuple(calls),
        explain,
        _analyzes(explain),
        without_data,
        prepares,
    )


_INTO = re.compile(
    r"\bINTO\s+(?:(TEMPORARY|TEMP|UNLOGGED)\s+)?(?:TABLE\s+)?$", re.IGNORECASE | re.DOTALL
)


def _as_create_table(sql: SqlText, select: exp.Select, into: exp.Into) -> str:
    """``SELECT ... INTO [TEMP | UNLOGGED] [TABLE] t ...`` as PostgreSQL reads it: ``CREATE
    [TEMP | UNLOGGED] TABLE t AS SELECT ...`` (the same command tag, ``SELECT n``)."""
    start, end = sql.span(into.this)
    found = _INTO.search(sql.text, 0, start)
    if found is None:
        raise unsupported("pgml functions cannot be called in this SELECT ... INTO")
    kind = f"{found.group(1).upper()} " if found.group(1) else ""
    table = sql.text[start:end]
    return f"CREATE {kind}TABLE {table} AS {sql.text[: found.start()]}{sql.text[end:]}"


MAX_NESTING = 2048
"""Parentheses nested deeper than this are not read (sqlglot recurses about 21 frames a
level, under the recursion limit the command line sets)."""


def _read(sql: str) -> tuple[list[Token], exp.Expr | None] | None:
    """Tokens and tree; None when the statement nests too deeply to read: found from the
    text first (before any token is made), or from sqlglot's RecursionError (whose
    traceback of tens of thousands of frames ends here, in the planner's thread)."""
    if nesting_depth(sql) > MAX_NESTING:
        return None
    tokens = DIALECT.tokenize(sql)
    if _current_of(tokens) and _calls_in_tokens(tokens):
        raise unsupported(
            "pgml functions cannot be called in UPDATE or DELETE ... WHERE CURRENT OF",
            hint="Update the rows by key: UPDATE t SET col = pgml...(...) WHERE id = ...",
        )
    try:
        trees = DIALECT.parser().parse(tokens, sql)  # the tokens read once, for both
    except RecursionError:
        return None
    if not trees or trees[0] is None:
        raise ParseError(f"No expression was parsed from '{sql}'")
    return tokens, exp.Block(expressions=trees) if len(trees) > 1 else trees[0]


def _current_of(tokens: list[Token]) -> bool:
    """Whether the tokens spell ``WHERE CURRENT OF`` (read from tokens, not the text: a
    case-blind search of a long text holds the interpreter for its whole length)."""
    return any(
        a.token_type == TokenType.WHERE and b.text.upper() == "CURRENT" and c.text.upper() == "OF"
        for a, b, c in zip(tokens, tokens[1:], tokens[2:], strict=False)
    )


def _calls_in_tokens(tokens: list[Token]) -> bool:
    """Whether the tokens spell ``pgml.<function>(`` anywhere (not inside a string),
    each name unquoted in any case or quoted in lower case."""
    for i in range(len(tokens) - 3):
        first, dot, name, paren = tokens[i : i + 4]
        if (
            _folded(first) == "pgml"
            and dot.token_type == TokenType.DOT
            and _folded(name) in FUNCTIONS
            and paren.token_type == TokenType.L_PAREN
        ):
            return True
    return False


def _folded(token: Token) -> str:
    """A name token as PostgreSQL reads it: quoted as written, else in lower case."""
    return token.text if token.token_type == TokenType.IDENTIFIER else token.text.lower()


def nesting(call: CallSite) -> int:
    return len(ancestors(call.node))


# --- what stands in for a constant call ---------------------------------------------------


def named_scalar(value_sql: str, name: str) -> str:
    """A value as a scalar subquery whose column is ``name``: PostgreSQL names a select-list
    item after it, through casts and subscripts, as it would name the call."""
    return f'(SELECT {value_sql} AS "{name}")'


def derived_table(value_sql: str, call: CallSite, elements: str | None = None) -> str:
    """A call of one column in FROM as a derived table: one row of ``value_sql``, or a
    row per element of the text array ``elements``, which ``value_sql`` reads as ``u.v``.

    Its column takes the name PostgreSQL gives a scalar function's column in FROM: the
    table alias when there is one (a column alias list after it still renames it), else
    the function's name, which then also names the table.  ``WITH ORDINALITY`` adds the
    row's number (``bigint``, from 1) as a last column named ``ordinality``.
    """
    name = call.alias or call.function.name
    source, number = "", "CAST(1 AS bigint)"
    if elements is not None:
        source = f" FROM unnest(CAST({elements} AS text[])) WITH ORDINALITY AS u(v, n)"
        number = "u.n"
    ordinality = f', {number} AS "ordinality"' if call.ordinality else ""
    table = f'(SELECT {value_sql} AS "{name}"{ordinality}{source})'
    return table if call.alias_node is not None else f'{table} AS "{name}"'


def table_rows(call: CallSite, overload: Overload, column_arrays: Sequence[str]) -> str:
    """A ``TABLE(...)`` function's rows in FROM, one array expression per column (and
    their number, ``WITH ORDINALITY``)."""
    names = [f'"{name}"' for name, _ in overload.columns]
    numbered = ""
    if call.ordinality:
        names.append('"ordinality"')
        numbered = " WITH ORDINALITY"
    rows = f"unnest({', '.join(column_arrays)}){numbered} AS __pgml_rows({', '.join(names)})"
    table = f"(SELECT * FROM {rows})"
    if call.alias_node is not None:
        return table
    return f'{table} AS "{call.function.name}"'


def _lateral_from(parsed: Parsed, call: CallSite) -> int | None:
    """Where a ``LATERAL`` subquery may join the FROM list of the select list that holds
    a per-row call returning a table (its end), where the call's arguments may be read
    there (no aggregate or window function in them); else None."""
    scope = call.scope
    if not isinstance(scope, exp.Select) or not any(
        contains(item, call.node) for item in scope.expressions
    ):
        return None
    if any(isinstance(n, exp.AggFunc | exp.Window) for a in call.args for n in a.walk()):
        return None
    layout = parsed.sql.select_layout(scope)
    if "from" not in layout.clauses:
        return None
    return parsed.sql.chars(*layout.clauses["from"])[1]


def _lateral(parsed: Parsed, call: CallSite) -> str:
    """``LATERAL`` for the derived table that stands for a call in FROM over the columns
    of the items before it, unless the client wrote it (a function is lateral unsaid)."""
    before = parsed.sql.word(parsed.sql.by_start[call.text.span[0]] - 1)
    return "LATERAL " if call.lateral and before != "LATERAL" else ""


def in_select_list(call: CallSite) -> bool:
    """Whether the call is itself an item of a select list (then a set-returning call
    names its column after itself)."""
    return isinstance(call.node.parent, exp.Select)


def skeleton(
    parsed: Parsed,
    parameter_oids: Sequence[int],
    label_types: Mapping[str, str],
    described: Mapping[int, list[int]] | None = None,
) -> str:
    """The statement with each call replaced by a typed NULL of its result type.

    PostgreSQL describes it exactly as it will describe the rewritten statement: the same
    columns, and the types of the client's own ``$n`` parameters, which keep their places
    inside the calls' (typed) arguments.  ``label_types`` gives the result type of calls
    whose type is their project's, by project name (text when it is not there).

    Under EXPLAIN the NULL is volatile and stands where the call stood (no subquery names
    it), so PostgreSQL plans the statement as it plans a VOLATILE function's call.
    ``described`` gives the argument types PostgreSQL gave a call's arguments, by the
    call's id, where the syntax alone does not tell them.
    """
    text = SourceText(parsed.text)
    for call in sorted(parsed.calls, key=lambda c: -nesting(c)):
        oids = (described or {}).get(id(call)) or syntax_oids(call, parameter_oids)
        overload = pick_overload(call, oids)
        found = positions(call, overload)
        assert found is not None
        typed = [
            f"CAST(({text.render(span)}) AS {overload.params[p].type})"
            for span, p in zip(call.text.arguments, found, strict=True)
        ]
        test = f"ROW({', '.join(typed)}) IS NULL" if typed else ""
        if parsed.explain:  # volatile: never folded to a constant
            test = f"{test} OR random() < 2" if test else "random() < 2"
            null = f"CASE WHEN {test} THEN NULL ELSE NULL END"
        else:
            null = f"CASE WHEN {test} THEN NULL END" if test else "NULL"
        returns = result_type(overload, label_types.get(project_literal(call) or "", "text"))
        value = f"CAST({null} AS {returns})"
        if overload.columns:
            arrays = [f"CAST(ARRAY[{null}] AS {kind}[])" for _, kind in overload.columns]
            lateral = _lateral_from(parsed, call)
            if call.in_from:
                replacement = _lateral(parsed, call) + table_rows(call, overload, arrays)
            elif lateral is not None:  # its record's fields named, as the rewrite gives them
                name = own(f"s{len(text.text)}_{call.text.span[0]}")
                fields = ", ".join(
                    f'({a})[1] AS "{column}"'
                    for a, (column, _) in zip(arrays, overload.columns, strict=True)
                )
                text.replace((lateral, lateral), f", LATERAL (SELECT {fields}) AS {name}")
                named = in_select_list(call)  # an item of its own: named after the call
                replacement = f'{name} AS "{call.function.name}"' if named else name
            else:
                fields = ", ".join(f"({a})[1]" for a in arrays)
                replacement = named_scalar(f"ROW({fields})", call.function.name)
        elif call.in_from:
            replacement = _lateral(parsed, call) + derived_table(value, call)
        elif parsed.explain:
            replacement = value
        else:
            replacement = named_scalar(value, call.function.name)
        text.replace(call.text.span, replacement)
    return parsed.explain + parsed.prepares + parsed.prefix + text.render()
