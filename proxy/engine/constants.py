"""Constant calls: a call whose arguments read no column is evaluated once, before the
statement runs, and its value takes its place as a parameter of the proxy's own."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from handlers.functions import TEXT_OIDS, Overload, PgmlError
from proxy.engine import binding, invoker, values
from proxy.engine.calls import CallSite
from proxy.engine.planner import derived_table, in_select_list, named_scalar, table_rows
from proxy.engine.sourcetext import SourceText
from proxy.wire import encoding

if TYPE_CHECKING:
    from proxy.engine.executor import Execution

_TYPED_LITERALS = {"jsonb": 3802, "json": 114, "text": 25}
_READ_HERE = frozenset({"text", "jsonb", "boolean"})
"""Parameter types an untyped literal's text is read as by the proxy itself."""


@dataclass(frozen=True, slots=True)
class Known:
    """An argument's type and value, known before the call runs."""

    oid: int
    value: Any


async def evaluate_constant(execution: Execution, text: SourceText, call: CallSite) -> None:
    """Evaluate a call whose arguments read no column, once, and put its value where
    it stood (as a parameter of the proxy's own)."""
    known = [
        known_value(execution, arg, text.render(span))
        for arg, span in zip(call.args, call.text.arguments, strict=True)
    ]
    missing = [i for i, k in enumerate(known) if k is None]
    if missing:
        found = await _typed_values(
            execution, [text.render(call.text.arguments[i]) for i in missing]
        )
        for i, k in zip(missing, found, strict=True):
            known[i] = k
    given = [k for k in known if k is not None]
    overload = invoker.pick(call, [k.oid for k in given])
    # An untyped literal that an overload takes as another type: PostgreSQL reads it.
    retyped = [
        i
        for i, k in enumerate(given)
        if k.oid == values.UNKNOWN_OID
        and k.value is not None
        and binding.parameter_type(call, overload, i) not in _READ_HERE
    ]
    if retyped:
        casts = [
            f"CAST(({text.render(call.text.arguments[i])}) AS "
            f"{binding.parameter_type(call, overload, i)})"
            for i in retyped
        ]
        for i, k in zip(retyped, await _typed_values(execution, casts), strict=True):
            given[i] = k
    invocation = await invoker.prepare(execution, call, overload, [k.value for k in given])
    returns = invocation.returns
    result = None
    live = None
    if not overload.strict or not any(v is None for v in invocation.bound):
        if overload.stream is not None and await execution.streams_rows():
            live = execution.live = invocation.stream(execution)
            result = []
        else:
            result = (await invocation.run(execution, [invocation.bound]))[0]
            execution.check_cancel()
    if not overload.set_returning and not overload.columns:
        execution.values[id(call.node)] = Known(_oid_of(returns), result)
    text.replace(call.text.span, _constant_sql(execution, call, overload, result, returns))
    if live is not None:
        live.param = len(execution.param_values()) - 1  # the rows' parameter, empty here


def known_value(execution: Execution, arg: exp.Expr, source: str) -> Known | None:
    """An argument's type and value when the statement alone says them: a string,
    number or boolean literal, a typed string literal, a text parameter, or a call
    evaluated already; else None (PostgreSQL is asked)."""
    inner = execution.values.get(id(arg))
    if inner is not None:
        return inner
    if isinstance(arg, exp.Null):
        return Known(values.UNKNOWN_OID, None)
    if isinstance(arg, exp.Boolean):
        return Known(16, bool(arg.this))
    if isinstance(arg, exp.Literal):
        return _literal(arg, source)
    if isinstance(arg, exp.Cast) and isinstance(arg.this, exp.Literal) and arg.this.is_string:
        oid = _TYPED_LITERALS.get(arg.to.sql(dialect="postgres").lower())
        plain = _literal(arg.this, source[source.find("'") : source.rfind("'") + 1])
        return None if oid is None or plain is None else Known(oid, plain.value)
    if isinstance(arg, exp.Parameter) and arg.this.name.isdigit():
        return _parameter(execution, int(arg.this.name) - 1)
    return None


def _parameter(execution: Execution, index: int) -> Known | None:
    user = execution.user
    if not 0 <= index < len(user.values) or user.oids[index] not in TEXT_OIDS:
        return None
    if user.formats and user.formats[index]:
        return None
    value = user.values[index]
    return Known(values.TEXT_OID, None if value is None else value.decode(encoding.current()))


async def _typed_values(execution: Execution, texts: Sequence[str]) -> list[Known]:
    """The types and values of constant expressions, asked of PostgreSQL."""
    inner = ", ".join(f"({t}) AS __pgml_a{i}" for i, t in enumerate(texts))
    outer = ", ".join(
        f"pg_typeof(s.__pgml_a{i})::oid, to_json(s.__pgml_a{i})::text" for i in range(len(texts))
    )
    result = await execution.select(
        f"{execution.with_queries}SELECT {outer} FROM (SELECT {inner}) AS s"
    )
    row = result.rows[0]
    return [
        Known(int(values.text(row[2 * i])), values.decode("jsonb", row[2 * i + 1]))
        for i in range(len(texts))
    ]


def _constant_sql(
    execution: Execution, call: CallSite, overload: Overload, result: Any, returns: str
) -> str:
    if overload.columns:
        rows = [] if result is None else result
        kinds = [kind for _, kind in overload.columns]
        params = [
            execution.add_param(
                values.text_array_literal([values.encode(kind, r[i]) for r in rows])
            )
            for i, kind in enumerate(kinds)
        ]
        if call.in_from:
            typed = [f"{p}::{k}[]" for p, k in zip(params, kinds, strict=True)]
            return table_rows(call, overload, typed)
        item = call.node.parent
        aliased = isinstance(item, exp.Alias) and isinstance(item.parent, exp.Select)
        if in_select_list(call) or aliased:  # a record a row, as PostgreSQL returns them
            arrays = ", ".join(f"CAST({p} AS {k}[])" for p, k in zip(params, kinds, strict=True))
            names = ", ".join(f"c{i}" for i in range(len(kinds)))
            records = (
                f"unnest(ARRAY(SELECT ROW({names}) FROM unnest({arrays}) WITH ORDINALITY "
                f"AS __pgml_rows({names}, n) ORDER BY n))"
            )
            return records if aliased else f'{records} AS "{call.function.name}"'
        if len(rows) != 1:
            raise PgmlError(
                "0A000",
                f"{call.sql_name} returned {len(rows)} rows where one value is needed",
                hint=f"Call it in FROM: SELECT * FROM {call.sql_name}(...).",
            )
        fields = ", ".join(f"(CAST({p} AS {k}[]))[1]" for p, k in zip(params, kinds, strict=True))
        return named_scalar(f"ROW({fields})", call.function.name)
    if overload.set_returning:
        rows = [] if result is None else result
        param = execution.add_param(
            values.text_array_literal([values.encode(returns, r) for r in rows])
        )
        if call.in_from:
            return derived_table(f"CAST(u.v AS {returns})", call, param)
        value = f"CAST(unnest(CAST({param} AS text[])) AS {returns})"
        return f'{value} AS "{call.function.name}"' if in_select_list(call) else value
    value = f"CAST({execution.add_param(values.encode(returns, result))} AS {returns})"
    if call.in_from:
        return derived_table(value, call)
    return named_scalar(value, call.function.name)


def _literal(node: exp.Literal, source: str) -> Known | None:
    if not node.is_string:
        text = node.name
        oid = values.number_oid(text)
        return Known(oid, float(text) if oid == 1700 else int(text))
    if not (source.startswith("'") and source.endswith("'")) or "\\" in source:
        return None  # E'...', U&'...', $$...$$ or backslashes: PostgreSQL reads them
    return Known(values.UNKNOWN_OID, source[1:-1].replace("''", "'"))


def _oid_of(kind: str) -> int:
    for oid, name in values.TYPE_NAMES.items():
        if name == kind:
            return oid
    return 0
