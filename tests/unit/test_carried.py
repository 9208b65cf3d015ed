"""The rows a statement that may not write carries through the proxy: the bound on their
size, and each call's results beside them.  No server."""

from __future__ import annotations

import pytest

from handlers.errors import PgmlError
from handlers.registry import FUNCTIONS
from proxy.engine import carried
from proxy.engine.carried import _Carried, _with_result
from proxy.engine.rows import RowCall


def test_more_text_than_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(carried, "CARRY_LIMIT", 10)
    rows = _Carried([[], []], [], [])
    rows.add(["1", "abcd"])
    rows.add(["2", None])
    with pytest.raises(PgmlError) as refused:
        rows.add(["3", "abcdef"])
    assert refused.value.sqlstate == "54000"
    assert rows.columns == [["1", "2"], ["abcd", None]]


def test_a_result_is_its_number_and_a_set_repeats_the_row_once_a_result_row() -> None:
    embed = RowCall(None, FUNCTIONS["embed"].overloads[0], [], [], "real[]", False, set())  # type: ignore[arg-type]
    assert _with_result([["k"]], embed, 3) == [["k", "3"]]
    assert _with_result([["k"]], embed, None) == [["k", None]]
    overload = FUNCTIONS["chunk"].overloads[0]
    row = RowCall(None, overload, [], [], "record", False, set())  # type: ignore[arg-type]
    heads = [["k", "x"]]
    assert _with_result(heads, row, [(1, "alpha"), (2, "beta")]) == [
        ["k", "x", "1", "1", "alpha"],
        ["k", "x", "2", "2", "beta"],
    ]
    assert _with_result(heads, row, []) == []
    assert _with_result(heads, row, None) == []
