"""The condition under which PostgreSQL reaches a call in its row (CASE's branches,
COALESCE's arguments), read from the statement as written, and where it cannot be
told: checked against PostgreSQL's own evaluation in
``tests/integration/test_statement_kinds.py``."""

from __future__ import annotations

import pytest

from proxy.engine.calls import CallSite
from proxy.engine.guards import guard_of, guarded_argument
from proxy.engine.planner import Parsed, parse_statement

CALL = "pgml.embed('m', body)"

GUARDED = [
    (f"SELECT CASE WHEN id < 0 THEN {CALL} END FROM t", "(CASE WHEN id < 0 THEN true END)"),
    (f"SELECT CASE WHEN id > $1 THEN {CALL} END FROM t", "(CASE WHEN id > $1 THEN true END)"),
    # the ELSE: reached when no condition held, each read in order
    (
        f"SELECT CASE WHEN body IS NULL THEN NULL WHEN length(body) > 9 THEN NULL ELSE {CALL} "
        "END FROM t",
        "(CASE WHEN body IS NULL THEN false WHEN length(body) > 9 THEN false ELSE true END)",
    ),
    # a later branch: the earlier conditions did not hold, its own did
    (
        f"SELECT CASE WHEN a = 'x  y' THEN 1 WHEN b THEN {CALL}[1] END FROM t",
        "(CASE WHEN a = 'x  y' THEN false WHEN b THEN true END)",
    ),
    # a condition itself: reached when the conditions before it did not hold
    (
        f"SELECT CASE WHEN id > 1 THEN 0 WHEN ({CALL})[1] > 0 THEN 1 END FROM t",
        "(CASE WHEN id > 1 THEN false ELSE true END)",
    ),
    # a simple CASE compares its operand with each value
    (
        f"SELECT CASE id % 3 WHEN 1 THEN NULL WHEN 2 THEN {CALL} END FROM t",
        "(CASE WHEN (id % 3) = (1) THEN false WHEN (id % 3) = (2) THEN true END)",
    ),
    # COALESCE reads its arguments up to the first that is not NULL
    (
        f"SELECT coalesce(a, upper(b), ({CALL})::text) FROM t",
        "(CASE WHEN num_nulls((a)) = 0 THEN false WHEN num_nulls((upper(b))) = 0 THEN false "
        "ELSE true END)",
    ),
    # nested: the outer condition first
    (
        f"SELECT CASE WHEN id > 2 THEN CASE WHEN c = 'a' THEN {CALL} END END FROM t",
        "(CASE WHEN (CASE WHEN id > 2 THEN true END) THEN (CASE WHEN c = 'a' THEN true END) END)",
    ),
]

UNGUARDED = [
    f"SELECT {CALL} FROM t",
    f"SELECT coalesce({CALL}, ARRAY[1]) FROM t",  # the first argument: always read
    f"SELECT CASE ({CALL})[1] WHEN 1 THEN 1 END FROM t",  # the operand: always read
    # conditions the inner query and the query around might read differently
    f"SELECT CASE WHEN random() < 0.5 THEN {CALL} END FROM t",
    f"SELECT CASE WHEN (SELECT max(id) FROM u) > 1 THEN {CALL} END FROM t",
    f"SELECT CASE WHEN pgml.predict('p', body) > 0 THEN {CALL} END FROM t",
    f"SELECT CASE WHEN now() > '2020-01-01' THEN {CALL} END FROM t",
]


def _call(sql: str) -> tuple[Parsed, CallSite]:
    parsed = parse_statement(sql)
    assert parsed is not None
    call = next(c for c in parsed.calls if c.function.name == "embed")
    return parsed, call


@pytest.mark.parametrize(("sql", "guard"), GUARDED)
def test_the_condition_that_reaches_the_call(sql: str, guard: str) -> None:
    parsed, call = _call(sql)
    assert guard_of(parsed.sql, call) == guard
    # folded into the first argument that reads columns; the others as written
    assert guarded_argument(parsed.sql, call, 1) == f"CASE WHEN {guard} THEN (body) END"
    assert guarded_argument(parsed.sql, call, 0) == "'m'"


@pytest.mark.parametrize("sql", UNGUARDED)
def test_reached_always_or_not_told(sql: str) -> None:
    parsed, call = _call(sql)
    assert guard_of(parsed.sql, call) is None
    assert guarded_argument(parsed.sql, call, 1) == "body"
