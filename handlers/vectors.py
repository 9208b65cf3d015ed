"""PostgresML's vector functions and aggregates, as SQL functions in schema ``pgml``.

They run inside PostgreSQL (LANGUAGE sql, IMMUTABLE, PARALLEL SAFE, STRICT as PostgresML
declares them), so they work in views, indexes and other functions, and the proxy relays
statements that call them untouched. Each exists for ``real[]`` and ``double precision[]``
with PostgresML's argument names. A NULL element is refused (22004), as are two vectors of
different lengths (2202E); a division by a zero norm or divisor is PostgreSQL's 22012.
"""

from __future__ import annotations

_CHECKS = """
CREATE FUNCTION pgml.vector_checked(vector anyarray) RETURNS anyarray
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    IF EXISTS (SELECT FROM unnest(vector) AS v WHERE v IS NULL) THEN
        RAISE EXCEPTION 'vector must not contain NULL elements' USING ERRCODE = '22004';
    END IF;
    RETURN vector;
END $$;
CREATE FUNCTION pgml.vector_checked(vector anyarray, other anyarray) RETURNS anyarray
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    IF cardinality(vector) <> cardinality(other) THEN
        RAISE EXCEPTION 'vectors have different lengths: % and %',
            cardinality(vector), cardinality(other) USING ERRCODE = '2202E';
    END IF;
    PERFORM pgml.vector_checked(other);
    RETURN pgml.vector_checked(vector);
END $$;
COMMENT ON FUNCTION pgml.vector_checked(anyarray, anyarray) IS
    'The first vector, once both are known to have no NULL element and the same length.';
"""

_ELEMENTWISE = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/"}
_SCALAR_NAMES = {
    "add": "addend",
    "subtract": "subtahend",
    "multiply": "multiplicand",
    "divide": "dividend",
}
"""PostgresML's names of the scalar argument (``subtahend`` as it spells it)."""
_VECTOR_NAMES = {
    "add": "addend",
    "subtract": "subtrahend",
    "multiply": "multiplicand",
    "divide": "dividend",
}

_OVER_ONE = {
    "norm_l0": "count(*) FILTER (WHERE v <> 0)",
    "norm_l1": "coalesce(sum(abs(v::float8)), 0)",
    "norm_l2": "sqrt(coalesce(sum(v::float8 * v), 0))",
    "norm_max": "coalesce(max(abs(v)), 0)",
}
"""Norms: an aggregate over the vector's elements ``v``."""
_OVER_TWO = {
    "distance_l1": "coalesce(sum(abs(a::float8 - b)), 0)",
    "distance_l2": "sqrt(coalesce(sum((a::float8 - b) ^ 2), 0))",
    "dot_product": "coalesce(sum(a::float8 * b), 0)",
    "cosine_similarity": "coalesce(sum(a::float8 * b), 0)"
    " / (sqrt(coalesce(sum(a::float8 * a), 0)) * sqrt(coalesce(sum(b::float8 * b), 0)))",
}
"""Of two vectors: an aggregate over their elements ``a`` and ``b``, pairwise."""
_NORMALIZE = {"normalize_l1": "norm_l1", "normalize_l2": "norm_l2", "normalize_max": "norm_max"}
_AGGREGATES = {
    "sum": ("s + v", "v"),
    "min": ("least(s, v)", "v"),
    "max": ("greatest(s, v)", "v"),
    "min_abs": ("least(s, abs(v))", "abs(v)"),
    "max_abs": ("greatest(s, abs(v))", "abs(v)"),
}
"""Element by element over rows: the step from state ``s`` and value ``v``, and the
first row's value. NULL rows are skipped; no rows give NULL."""

_PROPERTIES = "LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE"


def _functions(kind: str) -> str:
    """Every function and aggregate for vectors of ``kind`` (a float type)."""
    out: list[str] = []
    for name, op in _ELEMENTWISE.items():
        scalar, vector = _SCALAR_NAMES[name], _VECTOR_NAMES[name]
        out.append(
            f"CREATE FUNCTION pgml.{name}(vector {kind}[], {scalar} {kind}) RETURNS {kind}[] "
            f"{_PROPERTIES} AS $$ SELECT ARRAY(SELECT v {op} {scalar} "
            "FROM unnest(pgml.vector_checked(vector)) WITH ORDINALITY AS u (v, i) "
            "ORDER BY i) $$;"
        )
        out.append(
            f"CREATE FUNCTION pgml.{name}(vector {kind}[], {vector} {kind}[]) RETURNS {kind}[] "
            f"{_PROPERTIES} AS $$ SELECT ARRAY(SELECT a {op} b "
            f"FROM unnest(pgml.vector_checked(vector, {vector}), {vector}) "
            "WITH ORDINALITY AS u (a, b, i) ORDER BY i) $$;"
        )
    for name, value in _OVER_ONE.items():
        out.append(
            f"CREATE FUNCTION pgml.{name}(vector {kind}[]) RETURNS {kind} {_PROPERTIES} AS $$ "
            f"SELECT ({value})::{kind} FROM unnest(pgml.vector_checked(vector)) AS v $$;"
        )
    for name, norm in _NORMALIZE.items():
        out.append(
            f"CREATE FUNCTION pgml.{name}(vector {kind}[]) RETURNS {kind}[] {_PROPERTIES} AS $$ "
            f"SELECT pgml.divide(vector, pgml.{norm}(vector)) $$;"
        )
    for name, value in _OVER_TWO.items():
        out.append(
            f"CREATE FUNCTION pgml.{name}(vector {kind}[], other {kind}[]) RETURNS {kind} "
            f"{_PROPERTIES} AS $$ SELECT ({value})::{kind} "
            "FROM unnest(pgml.vector_checked(vector, other), other) AS u (a, b) $$;"
        )
    for name, (step, first) in _AGGREGATES.items():
        out.append(
            f"CREATE FUNCTION pgml.vector_{name}_step(state {kind}[], value {kind}[]) "
            f"RETURNS {kind}[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT CASE "
            "WHEN value IS NULL THEN state "
            f"WHEN state IS NULL THEN ARRAY(SELECT {first} FROM "
            "unnest(pgml.vector_checked(value)) WITH ORDINALITY AS u (v, i) ORDER BY i) "
            f"ELSE ARRAY(SELECT {step} FROM unnest(state, pgml.vector_checked(value, state)) "
            "WITH ORDINALITY AS u (s, v, i) ORDER BY i) END $$;"
        )
        out.append(
            f"CREATE AGGREGATE pgml.{name}({kind}[]) (SFUNC = pgml.vector_{name}_step, "
            f"STYPE = {kind}[], COMBINEFUNC = pgml.vector_{name}_step, PARALLEL = SAFE);"
        )
    return "\n".join(out)


SQL_FUNCTIONS = frozenset(
    [*_ELEMENTWISE, *_OVER_ONE, *_OVER_TWO, *_NORMALIZE, *_AGGREGATES, "vector_checked"]
    + [f"vector_{name}_step" for name in _AGGREGATES]
)
"""The names this migration creates in schema pgml: PostgreSQL runs them, not the proxy."""

MIGRATION = "\n".join([_CHECKS, _functions("real"), _functions("double precision")])
"""The catalog migration that creates them (shipped: never change its text)."""
