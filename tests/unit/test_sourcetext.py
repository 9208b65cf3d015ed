"""Splicing evaluated calls into a statement's text."""

from __future__ import annotations

import pytest

from proxy.engine.planner import DIALECT
from proxy.engine.sourcetext import (
    SourceText,
    call_text,
    nesting_depth,
    space_parameters,
    without_literals,
    words_after,
)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("select $1,$2", "select $1, $2"),
        ("select $1+$2||$3", "select $1+ $2|| $3"),
        ("select 'a,$1', E'x\\',$1'", "select 'a,$1', E'x\\',$1'"),
        ("select $$a,$1$$,$2", "select $$a,$1$$, $2"),
        ("select $tag$ ,$1 $tag$", "select $tag$ ,$1 $tag$"),
        ("select x/* ,$1 */,$3 -- ,$4", "select x/* ,$1 */, $3 -- ,$4"),
        ('select a$1, "b,$2"', 'select a$1, "b,$2"'),
    ],
)
def test_space_parameters(sql: str, expected: str) -> None:
    assert space_parameters(sql) == expected


def test_call_text_finds_arguments_and_named_values() -> None:
    sql = "SELECT x, pgml.embed('m', f(a, b), kwargs => '{}') AS e FROM t"
    text = call_text(DIALECT.tokenize(sql), sql.index("pgml"))
    assert sql[text.span[0] : text.span[1]] == "pgml.embed('m', f(a, b), kwargs => '{}')"
    assert [sql[s:e] for s, e in text.arguments] == ["'m'", "f(a, b)", "'{}'"]


def test_words_after_a_call_are_found_across_spaces_and_comments() -> None:
    sql = "SELECT * FROM pgml.chunk('a', 'b') /* n */ with\n ORDINALITY AS c"
    tokens = DIALECT.tokenize(sql)
    end = call_text(tokens, sql.index("pgml")).span[1]
    found = words_after(tokens, end, ("WITH", "ORDINALITY"))
    assert found is not None and sql[:found].endswith("with\n ORDINALITY")
    assert words_after(tokens, end, ("AS", "C")) is None


def test_nested_edits_render_outermost() -> None:
    source = SourceText("SELECT f(g(1)) FROM t")
    source.replace((11, 12), "$1")
    assert source.render((9, 13)) == "g($1)"
    source.replace((7, 14), "(SELECT 2)")
    assert source.render() == "SELECT (SELECT 2) FROM t"


@pytest.mark.parametrize(
    ("sql", "depth"),
    [
        ("SELECT 1", 0),
        ("SELECT ((1)), (2)", 2),
        ("SELECT '((((' || \"a(((\" || $$ (((( $$ || $t$ ((( $t$", 0),
        ("SELECT E'\\' ((' || ((1))", 2),
        ("SELECT /* ( /* (( */ ( */ (1) -- (((\n", 1),
        ("SELECT " + "(" * 5000 + "1" + ")" * 5000, 5000),
        ("SELECT ((1", 2),
    ],
)
def test_nesting_depth_counts_parentheses_in_code_only(sql: str, depth: int) -> None:
    assert nesting_depth(sql) == depth


def test_without_literals_blanks_strings_and_comments_but_keeps_names() -> None:
    sql = (
        "SELECT 'EXECUTE a', $t$ EXECUTE b $t$, E'\\' EXECUTE c' -- EXECUTE d\n"
        '/* EXECUTE e /* nested */ */ EXECUTE "F"(1), x$1'
    )
    assert without_literals(sql) == 'SELECT  ,  , E   \n  EXECUTE "F"(1), x$1'
