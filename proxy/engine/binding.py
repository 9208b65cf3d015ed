"""Which overload a call means, and its arguments as the handler takes them: one place.

Overloads are chosen as PostgreSQL chooses among functions: by the number and names of
the arguments, then by their types.  A type OID of 0 is not known yet and matches any
parameter; ``unknown`` (705, an untyped literal) matches any parameter, a string one
first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlglot import exp

from handlers.functions import (
    FEATURES,
    JSON_ARRAY_OIDS,
    LABEL,
    TEXT_ARRAY_OIDS,
    Args,
    Overload,
    PgmlError,
    accepts_oid,
    no_such_function,
)
from proxy.engine.calls import CallSite
from proxy.engine.values import (
    ANY_ARRAY_OID,
    CAST_OIDS,
    REAL_ARRAY_OID,
    TEXT_ARRAY_OID,
    UNKNOWN_OID,
    json_value,
    number_oid,
    type_name,
)


def positions(call: CallSite, overload: Overload) -> list[int] | None:
    """The parameter each argument goes to, or None when the overload cannot take them."""
    params = overload.params
    if len(call.args) > len(params):
        return None
    names = [p.name for p in params]
    found: list[int] = []
    for index, name in enumerate(call.names):
        if name is None:
            found.append(index)
        elif name in names:
            found.append(names.index(name))
        else:
            return None
    if len(set(found)) != len(found):
        return None
    given = set(found)
    if any(p.required and i not in given for i, p in enumerate(params)):
        return None
    return found


def _accepts(kind: str, oid: int, strings_only: bool) -> bool:
    if oid == 0:
        return True
    if oid == UNKNOWN_OID:
        return not (strings_only and kind.endswith("[]"))
    if oid == ANY_ARRAY_OID:  # of text where some overload takes it, else of numbers
        return kind == "text[]" if strings_only else kind.endswith("[]")
    return accepts_oid(kind, oid)


def pick_overload(call: CallSite, oids: Sequence[int]) -> Overload:
    """The overload whose parameters take arguments of these types.  Untyped literals go
    to a string parameter where some overload has one there, as PostgreSQL prefers."""
    for strings_only in (True, False):
        for overload in call.function.overloads:
            found = positions(call, overload)
            if found is not None and all(
                _accepts(overload.params[p].type, oid, strings_only)
                for p, oid in zip(found, oids, strict=True)
            ):
                return overload
    _explain_mismatch(call)
    names = [
        (f"{name} => " if name else "") + type_name(oid)
        for name, oid in zip(call.names, oids, strict=True)
    ]
    raise no_such_function(call.function.name, names, call.function)


def _explain_mismatch(call: CallSite) -> None:
    """When no overload takes these argument names or counts, say which rule broke."""
    if any(positions(call, o) is not None for o in call.function.overloads):
        return
    widest = max(call.function.overloads, key=lambda o: len(o.params))
    if len(call.args) > len(widest.params):
        raise PgmlError("42883", f"{call.sql_name} takes at most {len(widest.params)} arguments")
    known = call.function.parameter_names()
    for name in call.names:
        if name is not None and name not in known:
            raise PgmlError(
                "42883",
                f'{call.sql_name} has no parameter named "{name}"',
                hint="Parameters: " + ", ".join(p.name for p in widest.params) + ".",
            )
    named = [n for n in call.names if n is not None]
    for name in named:
        if named.count(name) > 1:
            raise PgmlError("42601", f'argument "{name}" of {call.sql_name} is given twice')
    first = call.function.overloads[0]
    missing = [
        p.name
        for i, p in enumerate(first.params)
        if p.required and i >= len(call.args) and p.name not in named
    ]
    if missing:
        raise PgmlError("42883", f"{call.sql_name} needs the argument {missing[0]}")


def bind(call: CallSite, overload: Overload, values: Sequence[Any]) -> Args:
    """The handler's argument tuple: every parameter, defaults filled in, JSON parsed."""
    return binder(call, overload)(values)


def binder(call: CallSite, overload: Overload) -> Callable[[Sequence[Any]], Args]:
    """:func:`bind` for one call and overload, its arguments' places found once (a
    per-row call binds every row's)."""
    found = positions(call, overload)
    assert found is not None
    defaults = [p.default for p in overload.params]
    kinds = [p.type for p in overload.params]

    def bound(values: Sequence[Any]) -> Args:
        slots = defaults.copy()
        for position, value in zip(found, values, strict=True):
            slots[position] = value
        return tuple(
            None if v is None else convert(kind, v) for kind, v in zip(kinds, slots, strict=True)
        )

    return bound


def convert(kind: str, value: Any) -> Any:
    if kind == "jsonb" and isinstance(value, str):
        return json_value(value)
    if kind == "boolean" and isinstance(value, str):
        return value.strip().lower() in ("t", "true", "yes", "on", "1")
    return value


def parameter_type(call: CallSite, overload: Overload, argument: int) -> str:
    found = positions(call, overload)
    assert found is not None
    return overload.params[found[argument]].type


def syntax_oids(call: CallSite, parameter_oids: Sequence[int]) -> list[int]:
    """Argument types as far as the statement's syntax tells them (before PostgreSQL
    has been asked): arrays, the client's typed ``$n`` parameters, numbers, casts to a
    scalar type; anything else is taken for an untyped literal."""
    found: list[int] = []
    for index, arg in enumerate(call.args):
        if isinstance(arg, exp.Array) or (
            isinstance(arg, exp.Cast) and arg.to.is_type(exp.DataType.Type.ARRAY)
        ):
            untold = isinstance(arg, exp.Array) and not all(
                isinstance(e, exp.Literal) for e in arg.expressions
            )
            if _of_numbers(arg) or (untold and not _takes_text_array(call, index)):
                found.append(REAL_ARRAY_OID)
            else:
                found.append(ANY_ARRAY_OID if untold else TEXT_ARRAY_OID)
        elif isinstance(arg, exp.Literal) and not arg.is_string:
            found.append(number_oid(arg.name))
        elif isinstance(arg, exp.Cast) and arg.to.sql(dialect="postgres").lower() in CAST_OIDS:
            found.append(CAST_OIDS[arg.to.sql(dialect="postgres").lower()])
        elif isinstance(arg, exp.Parameter) and arg.this.name.isdigit():
            number = int(arg.this.name)
            oid = parameter_oids[number - 1] if 0 < number <= len(parameter_oids) else 0
            if oid in TEXT_ARRAY_OIDS:
                oid = TEXT_ARRAY_OID
            found.append(oid if oid in JSON_ARRAY_OIDS else oid or UNKNOWN_OID)
        else:
            found.append(UNKNOWN_OID)
    return found


def _takes_text_array(call: CallSite, index: int) -> bool:
    """Whether some overload takes ``text[]`` as the call's argument ``index`` (else an
    array of columns or expressions there, whose type the syntax does not tell, is taken
    for one of numbers)."""
    for overload in call.function.overloads:
        found = positions(call, overload)
        if found is not None and accepts_oid(overload.params[found[index]].type, TEXT_ARRAY_OID):
            return True
    return False


def _of_numbers(array: exp.Expr) -> bool:
    """Whether an array literal, or a cast to an array type, is of numbers or booleans."""
    if isinstance(array, exp.Cast):
        element = array.to.expressions[0] if array.to.expressions else None
        return isinstance(element, exp.DataType) and element.is_type(
            *exp.DataType.NUMERIC_TYPES, exp.DataType.Type.BOOLEAN
        )
    items = [e.this if isinstance(e, exp.Neg) else e for e in array.expressions]
    return bool(items) and all(
        isinstance(e, exp.Boolean) or (isinstance(e, exp.Literal) and not e.is_string)
        for e in items
    )


def project_literal(call: CallSite) -> str | None:
    """The call's ``project_name`` when the statement spells it as a string literal."""
    for index, (arg, name) in enumerate(zip(call.args, call.names, strict=True)):
        if name == "project_name" or (name is None and index == 0):
            if isinstance(arg, exp.Literal) and arg.is_string:
                return str(arg.this)
            return None
    return None


def typed_by_project(call: CallSite, overload: Overload | None = None) -> bool:
    """Whether the call's result type is its project's (REAL or TEXT labels); never
    that of an ``overload`` that names a model by its id."""
    if overload is not None and all(p.name != "project_name" for p in overload.params):
        return False
    return any(LABEL in o.returns for o in call.function.overloads)


def result_type(overload: Overload, label_type: str) -> str:
    """The overload's SQL result type, with a project's label type filled in.  A project
    that predicts from a feature array gives one REAL per call, whichever overload the
    statement's syntax alone suggests."""
    if label_type == FEATURES:
        return "real" if LABEL in overload.returns else overload.returns
    return overload.returns.replace(LABEL, label_type)
