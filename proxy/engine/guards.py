"""When a call over columns runs for a row: only where PostgreSQL would call it.

PostgreSQL evaluates a ``CASE`` branch only for the rows that take it, and ``COALESCE``'s
arguments only up to the first that is not NULL: a call in ``CASE WHEN body IS NULL THEN
NULL ELSE pgml.embed(m, body) END`` never runs for a NULL body, and a call in a branch no
row takes never runs (nor fails).  The engine evaluates a step's calls over the rows of
its inner query, so it reads for each call the condition under which its row reaches it
(its *guard*) and folds it into the call's first argument that reads columns: ``CASE WHEN
<guard> THEN <argument> END``.  Where the guard is not true the argument is NULL and the
call, STRICT, is not made; its value is then read by no row.

A guard is evaluated in the inner query and the branch again by the query around, so it
is taken only where both give the same answer: conditions of column references, constants,
the statement's parameters, operators and a few immutable functions, their text as
written (checked by reading it back).  Anything else (a subquery, another call, a
volatile or unknown function, an aggregate) leaves the call unguarded, evaluated for
every row as before.
"""

from __future__ import annotations

import itertools

import sqlglot
from sqlglot import TokenType, exp

from proxy.engine.calls import CallSite, ancestors
from proxy.engine.planner import DIALECT
from proxy.engine.sqltext import SqlText

_IMMUTABLE = frozenset(
    {
        "abs", "array_length", "btrim", "cardinality", "char_length", "character_length",
        "length", "lower", "ltrim", "octet_length", "rtrim", "trim", "upper",
    }
)  # fmt: skip
"""Functions a guard may call: immutable, so the inner query and the query around agree."""

_LEAVES = (
    exp.Column, exp.Literal, exp.Null, exp.Boolean, exp.Identifier, exp.DataType, exp.Parameter,
)  # fmt: skip
_OPERATORS = (
    exp.Binary, exp.Unary, exp.Paren, exp.Is, exp.In, exp.Between, exp.Cast, exp.Tuple,
    exp.Array, exp.Var, exp.Bracket,
)  # fmt: skip


def guarded_argument(sql: SqlText, call: CallSite, index: int) -> str:
    """The text of the call's argument ``index``, folded with the call's guard when it is
    the first argument that reads columns."""
    start, end = call.text.arguments[index]
    text = sql.text[start:end]
    reading = [i for i, a in enumerate(call.args) if a.find(exp.Column) is not None]
    if not reading or reading[0] != index:
        return text
    if not all(overload.strict for overload in call.function.overloads):
        return text  # a NULL argument would be passed to it
    guard = guard_of(sql, call)
    return text if guard is None else f"CASE WHEN {guard} THEN ({text}) END"


def guard_of(sql: SqlText, call: CallSite) -> str | None:
    """The condition under which PostgreSQL reaches the call in its row, or None when it
    always does or when the condition cannot be told (see the module's docstring)."""
    above = [call.node, *ancestors(call.node)]
    path = list(itertools.takewhile(lambda node: not isinstance(node, exp.Query), above))
    guards: list[str] = []
    for i in range(1, len(path)):
        node, child = path[i], path[i - 1]
        found: str | None = ""
        if isinstance(node, exp.Case):
            found = _case_guard(sql, node, child, path[i - 2] if i >= 2 else None)
        elif isinstance(node, exp.Coalesce):
            found = _coalesce_guard(sql, node, child)
        if found is None:
            return None
        if found:
            guards.append(found)
    if not guards:
        return None
    combined = guards[0]
    for outer in guards[1:]:  # the outer condition first, as PostgreSQL reaches the inner
        combined = f"(CASE WHEN {outer} THEN {combined} END)"
    return combined


def _case_guard(
    sql: SqlText, case: exp.Case, child: exp.Expr, inside: exp.Expr | None
) -> str | None:
    operand = case.this
    if child is operand:
        return ""  # always evaluated
    ifs: list[exp.If] = case.args.get("ifs") or []
    if child is case.args.get("default"):
        taken, last = len(ifs), "ELSE true"
    else:
        k = next(j for j, branch in enumerate(ifs) if branch is child)
        if inside is ifs[k].this:  # a condition: reached when none before it held
            if k == 0:
                return ""
            taken, last = k, "ELSE true"
        else:
            taken, last = k + 1, ""
    tests: list[str] = []
    subject = None if operand is None else _text(sql, operand)
    if operand is not None and subject is None:
        return None
    for j in range(taken):
        value = _text(sql, ifs[j].this)
        if value is None:
            return None
        tests.append(value if subject is None else f"({subject}) = ({value})")
    outcomes = ["false"] * len(tests)
    if not last:  # the branch's own condition is the last test
        outcomes[-1] = "true"
    whens = [f"WHEN {t} THEN {o}" for t, o in zip(tests, outcomes, strict=True)]
    return f"(CASE {' '.join([*whens, last] if last else whens)} END)"


def _coalesce_guard(sql: SqlText, coalesce: exp.Coalesce, child: exp.Expr) -> str | None:
    arguments = [coalesce.this, *coalesce.expressions]
    k = next(j for j, argument in enumerate(arguments) if argument is child)
    if k == 0:
        return ""
    before = [_text(sql, argument) for argument in arguments[:k]]
    if any(text is None for text in before):
        return None
    # one at a time, as COALESCE reads them; num_nulls: NULL itself, not a row of NULLs
    whens = " ".join(f"WHEN num_nulls(({t})) = 0 THEN false" for t in before)
    return f"(CASE {whens} ELSE true END)"


def _text(sql: SqlText, node: exp.Expr) -> str | None:
    """The expression's text as written, when it is one a guard may hold and its text
    reads back as the same expression."""
    if not _deterministic(node):
        return None
    found = sql.meta_range(node)
    if found is None:
        return None
    first, last = found
    depth = sql.enclosing[first]
    while first > 0 and not _bound(sql, first - 1, depth):
        first -= 1
    while last + 1 < len(sql.tokens) and not _bound(sql, last + 1, depth):
        last += 1
    start, end = sql.chars(first, last)
    text = sql.text[start:end]
    try:
        read = sqlglot.parse_one(f"SELECT {text}", dialect=DIALECT)
    except sqlglot.errors.SqlglotError:  # a text that does not read back is not used
        return None
    if not isinstance(read, exp.Select) or len(read.expressions) != 1:
        return None
    return text if read.expressions[0] == node else None


_BOUNDS = frozenset({"WHEN", "THEN", "ELSE", "END", "CASE"})


def _bound(sql: SqlText, i: int, depth: int) -> bool:
    """Whether token ``i`` bounds an expression inside the paren at token ``depth`` (-1:
    none): that paren or its partner, or a comma or CASE keyword directly inside it."""
    kind = sql.kind(i)
    if kind == TokenType.L_PAREN:
        return i == depth
    if kind == TokenType.R_PAREN:
        return sql.match[i] == depth
    if sql.enclosing[i] != depth:
        return False
    return kind == TokenType.COMMA or sql.word(i) in _BOUNDS


def _deterministic(node: exp.Expr) -> bool:
    """Made of column references, constants, operators and :data:`_IMMUTABLE` functions."""
    for sub in node.walk():
        if isinstance(sub, (*_LEAVES, *_OPERATORS)):
            continue
        if isinstance(sub, exp.Anonymous) and str(sub.this).lower() in _IMMUTABLE:
            continue
        if isinstance(sub, exp.Func) and sub.sql_name().lower() in _IMMUTABLE:
            continue
        return False
    return True
