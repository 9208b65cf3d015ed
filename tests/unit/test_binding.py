"""Overloads and arguments, the sans-IO way: calls of the registry's functions parsed from
statements, bound as the handlers take them, and refused with PostgreSQL's SQLSTATEs where
PostgreSQL would find no function to call."""

from __future__ import annotations

import pytest

from handlers.functions import PgmlError
from proxy.engine import binding
from proxy.engine.calls import CallSite
from proxy.engine.planner import parse_statement

TEXT, TEXT_ARRAY, JSONB, UNKNOWN = 25, 1009, 3802, 705


def call_of(sql: str) -> CallSite:
    parsed = parse_statement(sql)
    assert parsed is not None
    (call,) = parsed.calls
    return call


def test_arguments_by_position_get_the_defaults_after_them() -> None:
    call = call_of("SELECT pgml.embed('m', body) FROM docs")
    overload = binding.pick_overload(call, [UNKNOWN, TEXT])
    assert [p.type for p in overload.params] == ["text", "text", "jsonb"]
    assert binding.bind(call, overload, ["m", "a b"]) == ("m", "a b", {})  # JSON read


def test_named_arguments_go_to_their_parameters_and_json_is_read() -> None:
    call = call_of("SELECT pgml.embed(kwargs => k, text => body, transformer => 'm') FROM docs")
    overload = binding.pick_overload(call, [JSONB, TEXT, UNKNOWN])
    assert binding.positions(call, overload) == [2, 1, 0]
    assert binding.bind(call, overload, ['{"normalize": true}', "x", "m"]) == (
        "m",
        "x",
        {"normalize": True},
    )


def test_the_type_of_an_argument_picks_the_overload() -> None:
    call = call_of("SELECT pgml.embed('m', inputs) FROM docs")
    assert binding.pick_overload(call, [UNKNOWN, TEXT_ARRAY]).params[1].type == "text[]"
    assert binding.pick_overload(call, [UNKNOWN, TEXT]).params[1].type == "text"
    assert binding.parameter_type(call, binding.pick_overload(call, [0, TEXT_ARRAY]), 1) == (
        "text[]"
    )


def test_a_binder_binds_every_row_as_bind_does() -> None:
    call = call_of("SELECT pgml.embed('m', body, '{\"a\": 1}') FROM docs")
    overload = binding.pick_overload(call, [UNKNOWN, TEXT, UNKNOWN])
    bind = binding.binder(call, overload)
    rows = [["m", f"row {i}", '{"a": 1}'] for i in range(3)] + [["m", None, '{"a": 1}']]
    assert [bind(r) for r in rows] == [binding.bind(call, overload, r) for r in rows]
    assert bind(rows[-1]) == ("m", None, {"a": 1})  # NULL stays NULL, unconverted


@pytest.mark.parametrize(
    ("spelling", "value"),
    [("t", True), ("true", True), (" YES ", True), ("on", True), ("1", True), ("f", False)],
)
def test_a_boolean_given_as_text_reads_as_postgresql_reads_it(spelling: str, value: bool) -> None:
    assert binding.convert("boolean", spelling) is value


@pytest.mark.parametrize(
    ("sql", "sqlstate", "message"),
    [
        ("SELECT pgml.embed('m', 'x', '{}', 4)", "42883", "takes at most 3 arguments"),
        ("SELECT pgml.embed('m', nosuch => 'x')", "42883", 'has no parameter named "nosuch"'),
        (
            "SELECT pgml.embed(transformer => 'm', transformer => 'n')",
            "42601",
            'argument "transformer" of pgml.embed is given twice',
        ),
        ("SELECT pgml.embed('m')", "42883", "needs the argument text"),
    ],
)
def test_arguments_no_overload_takes_are_refused_with_the_rule_they_break(
    sql: str, sqlstate: str, message: str
) -> None:
    call = call_of(sql)
    with pytest.raises(PgmlError) as refused:
        binding.pick_overload(call, [0] * len(call.args))
    assert refused.value.sqlstate == sqlstate
    assert message in refused.value.message


def test_an_argument_of_a_type_no_overload_takes_is_undefined_function() -> None:
    call = call_of("SELECT pgml.embed('m', flag) FROM docs")
    with pytest.raises(PgmlError) as refused:
        binding.pick_overload(call, [UNKNOWN, 16])  # boolean
    assert refused.value.sqlstate == "42883"
    assert "pgml.embed(unknown, boolean)" in refused.value.message
