"""A pgml statement as PostgreSQL analyses it: its skeleton (each call a typed value in
its place, see :func:`proxy.engine.planner.skeleton`) parsed and described in the
session.

PostgreSQL answers with the statement's columns and parameter types, or with the error
it gives the statement before running any of it (an ungrouped column, an unknown name),
naming the client's own columns.  Where the syntax does not tell a call's argument types
(a bare column, ``ARRAY[a, b]``), PostgreSQL is asked them in the same round trip, and
the statement described again if they pick another overload.
"""

from __future__ import annotations

import re

from sqlglot import exp

from proxy.engine import binding, planner, values
from proxy.engine.calls import reads_columns
from proxy.engine.names import own
from proxy.engine.planner import Parsed, skeleton
from proxy.engine.upstream import Reply, Result, ServerError, Skipped, Upstream

_DESCRIBE_NAME = own("describe")
_PARAMETER = re.compile(r"\$(\d+)")
_Asked = tuple[int, list[int], list[int], Reply]
"""A call's id, its arguments' syntax types, the untold ones' places, and the answer."""


async def describe(
    upstream: Upstream, parsed: Parsed, parameter_oids: list[int], labels: dict[str, str]
) -> Result:
    """PostgreSQL's description of the statement; its error is the statement's.
    ``labels``: the result types of project-typed calls, by project name."""
    asked = _ask_argument_types(upstream, parsed, parameter_oids)
    try:
        result = await _describe_shape(upstream, parsed, parameter_oids, labels, None)
    finally:
        typed = await _argument_types(asked)
    if any(  # the syntax guessed another overload: described again, as typed
        binding.pick_overload(c, typed[id(c)])
        is not binding.pick_overload(c, binding.syntax_oids(c, parameter_oids))
        for c in parsed.calls
        if id(c) in typed
    ):
        result = await _describe_shape(upstream, parsed, parameter_oids, labels, typed)
    return result


async def _describe_shape(
    upstream: Upstream,
    parsed: Parsed,
    parameter_oids: list[int],
    labels: dict[str, str],
    typed: dict[int, list[int]] | None,
) -> Result:
    """The skeleton's description (sent with what is buffered before it)."""
    shape = await planner.by_size(len(parsed.text), skeleton, parsed, parameter_oids, labels, typed)
    return await describe_text(upstream, shape, parameter_oids)


async def describe_text(upstream: Upstream, sql: str, parameter_oids: list[int]) -> Result:
    """PostgreSQL's description of ``sql`` as it stands (sent with what is buffered
    before it); its error is the statement's."""
    upstream.parse(_DESCRIBE_NAME, sql, parameter_oids)
    described = upstream.describe(b"S", _DESCRIBE_NAME)
    upstream.close(b"S", _DESCRIBE_NAME)
    upstream.flush()
    return await described


def probe_parameter_oids(probe: str, parameter_oids: list[int]) -> list[int]:
    """The parameter types to describe ``probe`` (a part of the statement) with: an
    untyped parameter the probe leaves out would be refused, so it is text there."""
    used = {int(n) for n in _PARAMETER.findall(probe)}
    return [
        oid or (0 if n + 1 in used else values.TEXT_OID) for n, oid in enumerate(parameter_oids)
    ]


def _ask_argument_types(
    upstream: Upstream, parsed: Parsed, parameter_oids: list[int]
) -> list[_Asked]:
    """Ask the types of call arguments that read columns where the syntax does not
    tell them (``ARRAY[a, b]``, a bare column), as PostgreSQL types them in the
    call's query (buffered: they go with the skeleton's description, so that a right
    guess costs no round trip).  Only for a query that reads nothing of an enclosing
    one; an error is the statement's own (PostgreSQL's answer to its Parse)."""
    asked: list[_Asked] = []
    for call in parsed.calls:
        oids = binding.syntax_oids(call, parameter_oids)
        untold = [
            i
            for i, (arg, oid) in enumerate(zip(call.args, oids, strict=True))
            if oid in (values.UNKNOWN_OID, values.ANY_ARRAY_OID) and reads_columns(arg)
        ]
        scope = call.scope
        if not untold or not isinstance(scope, exp.Select) or not _outermost(scope):
            continue
        layout = parsed.sql.select_layout(scope)
        clauses = layout.clauses
        if "from" not in clauses:
            continue
        pieces = [parsed.sql.source(*clauses[k]) for k in ("with",) if k in clauses]
        items = ", ".join("(" + parsed.text[slice(*call.text.arguments[i])] + ")" for i in untold)
        pieces += [f"SELECT {items}", parsed.sql.source(*clauses["from"])]
        probe = " ".join(pieces)
        upstream.parse(_DESCRIBE_NAME, probe, probe_parameter_oids(probe, parameter_oids))
        reply = upstream.describe(b"S", _DESCRIBE_NAME)
        upstream.close(b"S", _DESCRIBE_NAME)
        asked.append((id(call), oids, untold, reply))
    return asked


async def _argument_types(asked: list[_Asked]) -> dict[int, list[int]]:
    """Each asked call's argument types, those PostgreSQL told in place of the syntax's
    (none for a call whose question failed: the skeleton's description says why)."""
    found: dict[int, list[int]] = {}
    for key, oids, untold, reply in asked:
        try:
            columns = (await reply).columns
        except (ServerError, Skipped):  # the statement's own error: its Parse's answer
            continue
        typed = list(oids)
        for i, column in zip(untold, columns, strict=True):
            typed[i] = column.type_oid
        found[key] = typed
    return found


def _outermost(scope: exp.Select) -> bool:
    """Whether a query reads nothing of an enclosing one: the statement itself, or the
    query an INSERT or CREATE TABLE ... AS writes (without a WITH of its own)."""
    parent = scope.parent
    if parent is None:
        return True
    return isinstance(parent, exp.Insert | exp.Create) and parent.args.get("with_") is None
