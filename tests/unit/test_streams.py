"""Which statements stream a set-returning call's rows as they are produced: those
whose result is exactly the call's rows.  SQL in, decision out; no server."""

from __future__ import annotations

import pytest

from proxy.engine.planner import parse_statement
from proxy.engine.streams import streamable

CALL = "pgml.transform_stream('text-generation', '{}', 'x')"


@pytest.mark.parametrize(
    ("sql", "streams"),
    [
        (f"SELECT * FROM {CALL}", True),
        (f"SELECT * FROM {CALL} AS s", True),
        (f"SELECT * FROM {CALL} AS s(piece)", True),
        (f"SELECT {CALL}", True),
        (f"SELECT {CALL} AS piece", True),
        (f"DECLARE c CURSOR FOR SELECT * FROM {CALL}", True),
        (f'DECLARE "C" NO SCROLL CURSOR WITHOUT HOLD FOR SELECT * FROM {CALL}', True),
        (f"DECLARE c BINARY CURSOR FOR SELECT {CALL}", True),
        # the result is not the rows themselves: collected, PostgreSQL runs the rest
        (f"DECLARE c SCROLL CURSOR FOR SELECT * FROM {CALL}", False),
        (f"DECLARE c CURSOR WITH HOLD FOR SELECT * FROM {CALL}", False),
        (f"SELECT * FROM {CALL} LIMIT 3", False),
        (f"SELECT * FROM {CALL} WHERE true", False),
        (f"SELECT * FROM {CALL} ORDER BY 1", False),
        (f"SELECT DISTINCT * FROM {CALL}", False),
        (f"SELECT upper(s) FROM {CALL} AS s", False),
        (f"SELECT s.* FROM {CALL} AS s", False),
        (f"SELECT *, 1 FROM {CALL}", False),
        (f"SELECT * FROM {CALL}, generate_series(1, 2)", False),
        (f"SELECT * FROM (SELECT * FROM {CALL}) AS s", False),
        (f"SELECT {CALL}, 1", False),
        (f"SELECT upper({CALL})", False),
        (f"SELECT {CALL} UNION ALL SELECT 'x'", False),
        (f"WITH s AS (SELECT 1) SELECT * FROM {CALL}", False),
        (f"SELECT * FROM {CALL}, {CALL}", False),
        ("SELECT pgml.transform_stream('text-generation', '{}', t.body) FROM t", False),
        (f"INSERT INTO t SELECT * FROM {CALL}", False),
    ],
)
def test_streamable(sql: str, streams: bool) -> None:
    parsed = parse_statement(sql)
    assert parsed is not None
    assert streamable(parsed) is streams


def test_a_call_with_ordinality_is_numbered_by_postgresql_not_streamed() -> None:
    parsed = parse_statement(f"SELECT * FROM {CALL} WITH ORDINALITY AS s(t, n)")
    assert parsed is not None
    [call] = parsed.calls
    assert call.ordinality and not streamable(parsed)
    assert parsed.text[slice(*call.text.span)].endswith(") WITH ORDINALITY")
