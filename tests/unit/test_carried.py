"""The rows a statement that may not write carries through the proxy: the bound on their
size, a set-returning call's rows, and the constant that carries them.  No server."""

from __future__ import annotations

import pytest

from handlers.errors import PgmlError
from handlers.registry import FUNCTIONS
from proxy.engine import carried
from proxy.engine.carried import _Carried, _literal, _with_result
from proxy.engine.rows import RowCall


def test_more_text_than_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(carried, "CARRY_LIMIT", 10)
    rows = _Carried([[], []])
    rows.add(["1", "abcd"])
    rows.add(["2", None])
    with pytest.raises(PgmlError) as refused:
        rows.add(["3", "abcdef"])
    assert refused.value.sqlstate == "54000"
    assert rows.columns == [["1", "2"], ["abcd", None]]


def test_a_set_returning_result_repeats_the_row_once_a_result_row() -> None:
    overload = FUNCTIONS["chunk"].overloads[0]
    row = RowCall(None, overload, [], [], "record", False, set())  # type: ignore[arg-type]
    heads = [["k", "x"]]
    assert _with_result(heads, row, [(1, "alpha"), (2, "beta")]) == [
        ["k", "x", "1", "1", "alpha"],
        ["k", "x", "2", "2", "beta"],
    ]
    assert _with_result(heads, row, []) == []
    assert _with_result(heads, row, None) == []


def test_the_constant_reads_back_as_written_whatever_it_holds() -> None:
    text = '{"a\'b","$__pgml_0$","\\\\"}'
    quoted = _literal(text)
    tag = quoted[: quoted.index("$", 1) + 1]
    assert quoted == f"{tag}{text}{tag}"
    assert tag not in text
