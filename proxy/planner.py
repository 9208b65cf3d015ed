"""Finds the pgml calls in a statement and decides how each is evaluated.

The proxy never sends a pgml call to PostgreSQL.  Each call is evaluated by the proxy
and replaced in the statement, which PostgreSQL then runs as usual, so column names,
types, formats, command tags and transaction semantics are PostgreSQL's own:

* a call whose arguments read no column (a *constant* call) becomes a bound parameter
  (``$n::type``), or a derived table for a set-returning call in ``FROM``;
* a call whose arguments read columns becomes a lookup into a temporary table that the
  executor fills with the distinct argument values of the rows in the call's scope
  and the function's result for each.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import sqlglot
from sqlglot import TokenType, exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import ParseError, TokenError

from handlers.errors import PgmlError, unsupported
from handlers.functions import JSON_ARRAY_OIDS, TEXT_ARRAY_OIDS, Function, Overload
from handlers.inference import LABEL
from handlers.registry import FUNCTIONS
from proxy.sourcetext import CallText, SourceText, call_text, space_parameters

DIALECT = Postgres()

_BODY_CALL = re.compile(
    r"\bpgml\s*\.\s*(" + "|".join(sorted(FUNCTIONS, key=len, reverse=True)) + r")\s*\(",
    re.IGNORECASE,
)


@dataclass(eq=False)
class CallSite:
    """One pgml call in a statement."""

    index: int
    node: exp.Expr
    """What gets replaced: the ``pgml.f(...)`` Dot, or the Table in ``FROM``."""
    function: Function
    args: list[exp.Expr]
    names: list[str | None]
    """For each argument, its name when passed as ``name => value``."""
    in_from: bool
    alias: str | None = None
    """Column or table name the result takes where PostgreSQL would name it."""
    scope: exp.Expr | None = None
    """The query whose rows the arguments read; ``None`` for a constant call."""
    in_select_list_only: bool = False
    text: CallText | None = None
    """Where the call and its arguments stand in the statement's text."""

    @property
    def sql_name(self) -> str:
        return f"pgml.{self.function.name}"


@dataclass
class StatementPlan:
    tree: exp.Expr
    calls: list[CallSite] = field(default_factory=list)
    parameter_count: int = 0
    """Highest ``$n`` the client's own statement uses."""
    source: SourceText = field(default_factory=lambda: SourceText(""))
    """The statement's text, into which the evaluated calls are spliced."""
    prefix: str = ""
    """``DECLARE name ... CURSOR FOR`` before the query, kept as the client wrote it."""

    @property
    def declares_cursor(self) -> bool:
        """A cursor reads the call results after the statement: they live to its end."""
        return bool(self.prefix)

    def render(self) -> str:
        return self.prefix + self.source.render()

    def argument_text(self, call: CallSite, index: int) -> str:
        """An argument as the client wrote it, with calls inside it already evaluated."""
        assert call.text is not None
        return self.source.render(call.text.arguments[index])

    def substitute(self, call: CallSite, replacement: str) -> None:
        """Put ``replacement`` (SQL) where the call stands, in the text and in the tree.

        The tree is only read to evaluate the other calls, so a plan of one call leaves it
        as it is (and can be reused, see :func:`plan_statement`).
        """
        assert call.text is not None
        self.source.replace(call.text.span, replacement)
        if len(self.calls) == 1:
            return
        parsed = sqlglot.parse_one(f"SELECT {replacement}", dialect=DIALECT)
        assert isinstance(parsed, exp.Select)
        call.node.replace(parsed.expressions[0])


def split_statements(sql: str) -> list[str]:
    """Split a simple Query's text into statements, as PostgreSQL's parser would."""
    sql = space_parameters(sql)
    try:
        tokens = DIALECT.tokenize(sql)
    except TokenError:
        return [sql]
    pieces: list[str] = []
    start = 0
    has_tokens = False
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            if has_tokens or not pieces:
                pieces.append(sql[start : token.end + 1])
            else:  # an empty statement: PostgreSQL ignores it
                pieces[-1] += sql[start : token.end + 1]
            start = token.end + 1
            has_tokens = False
        else:
            has_tokens = True
    if sql[start:].strip():
        if has_tokens or not pieces:
            pieces.append(sql[start:])
        else:  # only a comment after the last statement
            pieces[-1] += sql[start:]
    return pieces or [sql]


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


_BODY_STATEMENT = re.compile(
    r"^(?:\s|--[^\n]*\n|/\*.*?\*/)*(?:DO\b|CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE)\b)",
    re.IGNORECASE | re.DOTALL,
)


PLAN_CACHE_SIZE = 512
_plans: OrderedDict[str, StatementPlan | None] = OrderedDict()


def plan_statement(sql: str) -> StatementPlan | None:
    """Plan one statement; ``None`` when it calls no pgml function (relay it as it is).

    Plans of one call (the tree of which evaluation never changes) are kept by text, so a
    prepared statement run again, or the same query sent again, is not parsed again.
    """
    if sql in _plans:
        _plans.move_to_end(sql)
        cached = _plans[sql]
        return None if cached is None else replace(cached, source=SourceText(cached.source.text))
    plan = _plan_statement(sql)
    if plan is None or len(plan.calls) == 1:
        _plans[sql] = plan
        if len(_plans) > PLAN_CACHE_SIZE:
            _plans.popitem(last=False)
        if plan is not None:
            return replace(plan, source=SourceText(plan.source.text))
    return plan


def _plan_statement(sql: str) -> StatementPlan | None:
    if _BODY_STATEMENT.match(sql):
        if _BODY_CALL.search(sql):
            raise unsupported(
                "pgml functions cannot be called inside a function body or DO block",
                hint="Call pgml functions in a top-level statement, e.g. "
                "INSERT INTO results SELECT pgml.predict(...) FROM ...",
            )
        return None
    sql = space_parameters(sql)
    declare = _DECLARE_CURSOR.match(sql)
    if declare is not None:
        plan = _plan_statement(sql[declare.end() :])
        if plan is not None:
            plan.prefix = declare.group(0)
        return plan
    try:
        tree = sqlglot.parse_one(sql, dialect=DIALECT)
    except (ParseError, TokenError) as exc:
        if _BODY_CALL.search(sql):
            raise PgmlError(
                "42601",
                "could not parse a statement that calls a pgml function",
                detail=str(exc).splitlines()[0],
                hint="Write the call in a plain SELECT, INSERT, UPDATE or CREATE TABLE AS.",
            ) from exc
        return None
    if tree is None:
        return None
    calls = find_calls(tree)
    if not calls:
        return None
    if isinstance(tree, exp.Create) and str(tree.args.get("kind", "")).upper() == "VIEW":
        raise unsupported(
            "pgml functions cannot be called in a view definition",
            hint="Store the results with CREATE TABLE ... AS SELECT pgml...(...) FROM ..., "
            "then define the view over that table.",
        )
    plan = StatementPlan(tree, calls, _parameter_count(tree), SourceText(sql))
    tokens = DIALECT.tokenize(sql)
    for call in calls:
        _place(call)
        call.text = call_text(tokens, _start_of(call))
        if len(call.text.arguments) != len(call.args):
            raise PgmlError("42601", f"could not read the arguments of {call.sql_name}")
    return plan


def _start_of(call: CallSite) -> int:
    pgml = call.node.args.get("db") if call.in_from else call.node.this
    assert pgml is not None
    return int(pgml.meta["start"])


def find_calls(tree: exp.Expr) -> list[CallSite]:
    calls: list[CallSite] = []
    for node in tree.walk():
        anonymous: exp.Expr | None = None
        in_from = False
        if isinstance(node, exp.Dot) and _is_pgml(node.this):
            anonymous = node.expression
        elif isinstance(node, exp.Table) and _is_pgml(node.args.get("db")):
            anonymous = _as_anonymous(node.this)
            in_from = True
        if not isinstance(anonymous, exp.Anonymous):
            continue
        name = str(anonymous.this).lower()
        function = FUNCTIONS.get(name)
        if function is None:
            continue
        args, names = _arguments(anonymous)
        site = CallSite(len(calls), node, function, args, names, in_from)
        if in_from:
            alias = node.args.get("alias")
            site.alias = alias.name if alias is not None and alias.name else name
        calls.append(site)
    return calls


def _as_anonymous(node: exp.Expr) -> exp.Expr:
    """A pgml function that sqlglot reads as one of its own (``pgml.rank`` in FROM is
    ``Rank``), as the anonymous call it is."""
    if isinstance(node, exp.Anonymous) or not isinstance(node, exp.Func):
        return node
    name = node.sql_name().lower()
    if name not in FUNCTIONS or set(node.args) - {"expressions"}:
        return node
    anonymous = exp.Anonymous(this=name, expressions=list(node.expressions))
    node.replace(anonymous)
    return anonymous


def _is_pgml(node: exp.Expr | None) -> bool:
    if not isinstance(node, exp.Identifier):
        return False
    return node.name == "pgml" if node.quoted else node.name.lower() == "pgml"


def _arguments(call: exp.Anonymous) -> tuple[list[exp.Expr], list[str | None]]:
    args: list[exp.Expr] = []
    names: list[str | None] = []
    for arg in call.expressions:
        if isinstance(arg, exp.Kwarg):
            names.append(arg.this.name)
            args.append(arg.expression)
        else:
            if any(n is not None for n in names):
                raise PgmlError("42601", "positional argument cannot follow named argument")
            names.append(None)
            args.append(arg)
    return args, names


def _parameter_count(tree: exp.Expr) -> int:
    numbers = [
        int(p.this.name)
        for p in tree.find_all(exp.Parameter)
        if isinstance(p.this, exp.Literal) and p.this.name.isdigit()
    ]
    return max(numbers, default=0)


# --- where a call stands -------------------------------------------------------------


def _place(call: CallSite) -> None:
    """Find the call's scope and check that the proxy can evaluate it there."""
    node = call.node
    if any(isinstance(a, exp.Returning) for a in _ancestors(node)):
        raise unsupported(
            f"{call.sql_name} cannot be called in a RETURNING list",
            hint="Select the returned rows first, then call the function on them: "
            "WITH r AS (INSERT ... RETURNING ...) is not supported either; "
            "use INSERT ... SELECT pgml... FROM ... instead.",
        )
    if any(isinstance(a, exp.Join) and contains(a.args.get("on"), node) for a in _ancestors(node)):
        raise unsupported(
            f"{call.sql_name} cannot be called in a JOIN condition",
            hint="Compute it in a CTE first, then join on the CTE's column.",
        )
    reads_columns = any(_reads_columns(arg) for arg in call.args)
    if not reads_columns:
        if not call.in_from:
            call.alias = _select_list_alias(call)
        return
    if call.in_from:
        raise unsupported(
            f"{call.sql_name} in FROM cannot take column arguments",
            hint="Pass constant arguments, or call it in the select list.",
        )
    scope = next(
        (a for a in _ancestors(node) if isinstance(a, exp.Select | exp.Update | exp.Delete)),
        None,
    )
    if scope is None:
        raise unsupported(f"{call.sql_name} reads columns outside of a query")
    _refuse_correlation(call, scope)
    call.scope = scope
    call.alias = _select_list_alias(call)
    call.in_select_list_only = isinstance(scope, exp.Select) and any(
        contains(e, node) for e in scope.expressions
    )


def _ancestors(node: exp.Expr) -> list[exp.Expr]:
    found: list[exp.Expr] = []
    parent = node.parent
    while parent is not None:
        found.append(parent)
        parent = parent.parent
    return found


def contains(root: exp.Expr | None, node: exp.Expr) -> bool:
    """Whether ``node`` itself (not an equal copy) is in ``root``'s tree."""
    return root is not None and any(n is node for n in root.walk())


def _reads_columns(arg: exp.Expr) -> bool:
    return any(isinstance(n, exp.Column) for n in arg.walk())


def _refuse_correlation(call: CallSite, scope: exp.Expr) -> None:
    """Column references qualified with a table that is not in the call's own scope."""
    visible = {
        (t.alias_or_name or "").lower()
        for t in scope.find_all(exp.Table)
        if t.find_ancestor(exp.Select, exp.Update, exp.Delete) is scope
    }
    visible |= {
        s.alias.lower()
        for s in scope.find_all(exp.Subquery)
        if s.alias and s.find_ancestor(exp.Select, exp.Update, exp.Delete) is scope
    }
    for arg in call.args:
        for column in arg.find_all(exp.Column):
            if column.table and column.table.lower() not in visible:
                raise unsupported(
                    f"{call.sql_name} cannot read columns of an outer query "
                    f'("{column.table}.{column.name}")',
                    hint="Move the call to the outer query, or join the tables in one query.",
                )


def _select_list_alias(call: CallSite) -> str | None:
    """The column name PostgreSQL would give a select-list item made of this call."""
    top: exp.Expr = call.node
    while isinstance(top.parent, exp.Cast | exp.Bracket | exp.Paren) and top.parent.this is top:
        top = top.parent
    parent = top.parent
    if isinstance(parent, exp.Select) and top in parent.expressions:
        return call.function.name
    return None


# --- rewriting ----------------------------------------------------------------------


def named_scalar(value_sql: str, name: str) -> str:
    """A value as a scalar subquery whose column is ``name``: PostgreSQL names a select-list
    item after it, through casts and subscripts, as it would name the call."""
    return f'(SELECT {value_sql} AS "{name}")'


def derived_table(value_sql: str, call: CallSite) -> str:
    """A set-returning call in FROM as a derived table.

    Its column takes the name PostgreSQL gives a scalar function's column in FROM: the
    table alias when there is one (a column alias list after it still renames it), else
    the function's name, which then also names the table.
    """
    name = call.alias or call.function.name
    table = f'(SELECT {value_sql} AS "{name}")'
    return table if call.node.args.get("alias") is not None else f'{table} AS "{name}"'


def table_rows(call: CallSite, overload: Overload, column_arrays: Sequence[str]) -> str:
    """A ``TABLE(...)`` function's rows in FROM, one array expression per column."""
    names = ", ".join(f'"{name}"' for name, _ in overload.columns)
    table = f"(SELECT * FROM unnest({', '.join(column_arrays)}) AS __pgml_rows({names}))"
    if call.node.args.get("alias") is not None:
        return table
    return f'{table} AS "{call.function.name}"'


def skeleton_sql(
    sql: str, parameter_oids: Sequence[int], label_types: Mapping[str, str] | None = None
) -> str:
    """The statement with each call replaced by a typed NULL of its result type.

    PostgreSQL describes it exactly as it will describe the rewritten statement: the same
    columns, and the types of the client's own ``$n`` parameters, which keep their places
    inside the calls' (typed) arguments.  ``label_types`` gives the result type of calls
    whose type is their project's, by project name (text when it is not there).
    """
    plan = plan_statement(sql)
    assert plan is not None
    for call in sorted(plan.calls, key=lambda c: -_nesting(c)):
        overload = _likely_overload(call, parameter_oids)
        positions = _argument_positions(call, overload)
        typed = [
            f"CAST(({plan.argument_text(call, i)}) AS {overload.params[position].type})"
            for i, position in enumerate(positions)
        ]
        null = f"CASE WHEN ROW({', '.join(typed)}) IS NULL THEN NULL END" if typed else "NULL"
        returns = result_type(
            overload, (label_types or {}).get(project_literal(call) or "", "text")
        )
        value = f"CAST({null} AS {returns})"
        if overload.columns:
            arrays = [f"CAST(ARRAY[{null}] AS {kind}[])" for _, kind in overload.columns]
            if call.in_from:
                plan.substitute(call, table_rows(call, overload, arrays))
            else:
                fields = ", ".join(f"({a})[1]" for a in arrays)
                plan.substitute(call, named_scalar(f"ROW({fields})", call.function.name))
        elif call.in_from:
            plan.substitute(call, derived_table(value, call))
        else:
            plan.substitute(call, named_scalar(value, call.function.name))
    return plan.render()


def result_type(overload: Overload, label_type: str) -> str:
    """The overload's SQL result type, with a project's label type filled in."""
    return overload.returns.replace(LABEL, label_type)


def project_literal(call: CallSite) -> str | None:
    """The call's ``project_name`` when the statement spells it as a string literal."""
    for arg, name in zip(call.args, call.names, strict=True):
        if name == "project_name" or (name is None and arg is call.args[0]):
            if isinstance(arg, exp.Literal) and arg.is_string:
                return str(arg.this)
            return None
    return None


def project_literals(sql: str) -> set[str]:
    """Projects named literally by calls whose result type is their project's."""
    plan = plan_statement(sql)
    if plan is None:
        return set()
    found = set()
    for call in plan.calls:
        if any(LABEL in o.returns for o in call.function.overloads):
            name = project_literal(call)
            if name is not None:
                found.add(name)
    return found


def _nesting(call: CallSite) -> int:
    return len(_ancestors(call.node))


def _argument_positions(call: CallSite, overload: Overload) -> list[int]:
    names = [p.name for p in overload.params]
    return [
        index if name is None else names.index(name) if name in names else index
        for index, name in enumerate(call.names)
    ]


def _likely_overload(call: CallSite, parameter_oids: Sequence[int]) -> Overload:
    """The overload PostgreSQL would pick from the arguments' syntax alone."""
    overloads = call.function.overloads
    for overload in overloads:
        if len(call.args) > len(overload.params):
            continue
        names = {p.name for p in overload.params}
        if any(name is not None and name not in names for name in call.names):
            continue
        positions = _argument_positions(call, overload)
        if all(
            _could_be(arg, overload.params[position].type, parameter_oids)
            for arg, position in zip(call.args, positions, strict=True)
        ):
            return overload
    return overloads[0]


def _could_be(arg: exp.Expr, sql_type: str, parameter_oids: Sequence[int]) -> bool:
    is_array = isinstance(arg, exp.Array) or (
        isinstance(arg, exp.Cast) and arg.to.is_type(exp.DataType.Type.ARRAY)
    )
    if isinstance(arg, exp.Parameter) and arg.this.name.isdigit():
        number = int(arg.this.name)
        if 0 < number <= len(parameter_oids):
            is_array = parameter_oids[number - 1] in TEXT_ARRAY_OIDS | JSON_ARRAY_OIDS
    return is_array == sql_type.endswith("[]")
