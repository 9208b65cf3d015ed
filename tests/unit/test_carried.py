"""The rows a statement that may not write carries through the proxy: the bound on their
size, and each call's results beside them.  No server."""

from __future__ import annotations

import pytest

from handlers.capacity import Capacity, Limits
from handlers.errors import PgmlError
from handlers.registry import FUNCTIONS
from handlers.signatures import Overload
from proxy.engine.carried import _Carried, _with_result
from proxy.engine.invoker import Invocation
from proxy.engine.rows import RowCall


def _row_call(overload: Overload, returns: str) -> RowCall:
    """A call's results as :func:`_with_result` reads them (no statement behind it)."""
    invocation = Invocation(None, overload, (), returns, False)  # type: ignore[arg-type]
    return RowCall(None, invocation, [], [])  # type: ignore[arg-type]


def test_one_callers_statements_share_the_limit_and_others_have_their_own() -> None:
    capacity = Capacity(Limits(max_carried_mb=1))
    half = 600 * 1024
    with capacity.carrying("alice") as first:
        first(half)
        with capacity.carrying("alice") as second, capacity.carrying("bob") as other:
            other(half)
            other(half // 2)
            with pytest.raises(PgmlError) as refused:
                second(half)
            assert refused.value.sqlstate == "54000"
            assert "--max-carried-mb" in (refused.value.hint or "")
    with capacity.carrying("alice") as again:  # what ended is given back
        again(half)
        again(half // 2)


def test_rows_are_kept_until_the_text_is_refused() -> None:
    capacity = Capacity(Limits(max_carried_mb=1))
    with capacity.carrying("alice") as charge:
        charge((1 << 20) - 6)
        rows = _Carried([[], []], [], [], charge)
        rows.add(["1", "abcd"])
        rows.add(["2", None])
        with pytest.raises(PgmlError) as refused:
            rows.add(["3", "abcdef"])
    assert refused.value.sqlstate == "54000"
    assert rows.columns == [["1", "2"], ["abcd", None]]


def test_a_result_is_its_number_and_a_set_repeats_the_row_once_a_result_row() -> None:
    embed = _row_call(FUNCTIONS["embed"].overloads[0], "real[]")
    assert _with_result([["k"]], embed, 3) == [["k", "3"]]
    assert _with_result([["k"]], embed, None) == [["k", None]]
    overload = FUNCTIONS["chunk"].overloads[0]
    row = _row_call(overload, "record")
    heads = [["k", "x"]]
    assert _with_result(heads, row, [(1, "alpha"), (2, "beta")]) == [
        ["k", "x", "1", "1", "alpha"],
        ["k", "x", "2", "2", "beta"],
    ]
    assert _with_result(heads, row, []) == []
    assert _with_result(heads, row, None) == []
