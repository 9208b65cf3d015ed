"""PostgresML's vector functions and aggregates, run by PostgreSQL in schema pgml: each
result equal to numpy's on random vectors of REAL[] and DOUBLE PRECISION[], NULL and bad
input as documented, and usable where only PostgreSQL's own functions are (views,
expression indexes), the proxy relaying the statements."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import errors

from handlers.registry import FUNCTIONS
from handlers.vectors import SQL_FUNCTIONS
from tests.integration._pgml import unique
from tests.support.proxyproc import ProxyProcess

KINDS = {"real": (np.float32, 1e-5), "double precision": (np.float64, 1e-12)}
RANDOM = np.random.default_rng(20)
ELEMENTWISE: dict[str, Callable[[Any, Any], Any]] = {
    "add": np.add,
    "subtract": np.subtract,
    "multiply": np.multiply,
    "divide": np.divide,
}
NORMS: dict[str, Callable[[Any], Any]] = {
    "norm_l0": lambda v: np.count_nonzero(v),
    "norm_l1": lambda v: np.linalg.norm(v, 1),
    "norm_l2": lambda v: np.linalg.norm(v, 2),
    "norm_max": lambda v: np.linalg.norm(v, np.inf),
    "normalize_l1": lambda v: v / np.linalg.norm(v, 1),
    "normalize_l2": lambda v: v / np.linalg.norm(v, 2),
    "normalize_max": lambda v: v / np.linalg.norm(v, np.inf),
}
PAIRS: dict[str, Callable[[Any, Any], Any]] = {
    "distance_l1": lambda a, b: np.abs(a - b).sum(),
    "distance_l2": lambda a, b: np.linalg.norm(a - b),
    "dot_product": np.dot,
    "cosine_similarity": lambda a, b: np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)),
}
AGGREGATES: dict[str, Callable[[Any], Any]] = {
    "sum": lambda m: m.sum(axis=0),
    "min": lambda m: m.min(axis=0),
    "max": lambda m: m.max(axis=0),
    "min_abs": lambda m: np.abs(m).min(axis=0),
    "max_abs": lambda m: np.abs(m).max(axis=0),
}


@pytest.fixture(scope="module")
def db(proxy: ProxyProcess) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(proxy.dsn(), autocommit=True) as connection:
        connection.execute("CREATE EXTENSION IF NOT EXISTS pgml")
        yield connection


def vector(kind: str, size: int = 17) -> Any:
    dtype, _ = KINDS[kind]
    return RANDOM.normal(size=size).astype(dtype)


def one(db: psycopg.Connection[Any], sql: str, *params: Any) -> Any:
    row = db.execute(sql, list(params)).fetchone()
    assert row is not None
    return row[0]


def close(got: Any, expected: Any, kind: str) -> None:
    _, tolerance = KINDS[kind]
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), expected, rtol=tolerance * 10)
    assert np.asarray(got).shape == np.asarray(expected).shape


def test_no_proxy_function_shares_a_name() -> None:
    assert not SQL_FUNCTIONS & set(FUNCTIONS)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise(db: psycopg.Connection[Any], kind: str, name: str) -> None:
    a, b = vector(kind), vector(kind)
    scalar = a.dtype.type(RANDOM.normal())
    got = one(db, f"SELECT pgml.{name}(%s::{kind}[], %s::{kind})", a.tolist(), float(scalar))
    close(got, ELEMENTWISE[name](a, scalar), kind)
    got = one(db, f"SELECT pgml.{name}(%s::{kind}[], %s::{kind}[])", a.tolist(), b.tolist())
    close(got, ELEMENTWISE[name](a, b), kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", NORMS)
def test_norms(db: psycopg.Connection[Any], kind: str, name: str) -> None:
    a = vector(kind)
    a[3] = 0
    close(one(db, f"SELECT pgml.{name}(%s::{kind}[])", a.tolist()), NORMS[name](a), kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", PAIRS)
def test_pairs(db: psycopg.Connection[Any], kind: str, name: str) -> None:
    a, b = vector(kind), vector(kind)
    got = one(db, f"SELECT pgml.{name}(%s::{kind}[], %s::{kind}[])", a.tolist(), b.tolist())
    close(got, PAIRS[name](a, b), kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", AGGREGATES)
def test_aggregates(db: psycopg.Connection[Any], kind: str, name: str) -> None:
    rows = np.stack([vector(kind, 9) for _ in range(40)])
    table = unique("vectors")
    db.execute(f"CREATE TABLE {table} (v {kind}[])")
    try:
        with db.cursor() as cursor:
            cursor.executemany(f"INSERT INTO {table} VALUES (%s)", [[r.tolist()] for r in rows])
        db.execute(f"INSERT INTO {table} VALUES (NULL)")  # skipped, as PostgresML does
        close(one(db, f"SELECT pgml.{name}(v) FROM {table}"), AGGREGATES[name](rows), kind)
        assert one(db, f"SELECT pgml.{name}(v) FROM {table} WHERE false") is None
    finally:
        db.execute(f"DROP TABLE {table}")


def test_null_and_empty(db: psycopg.Connection[Any]) -> None:
    assert one(db, "SELECT pgml.norm_l2(NULL::real[])") is None
    assert one(db, "SELECT pgml.add(ARRAY[1]::real[], NULL::real)") is None
    assert one(db, "SELECT pgml.add('{}'::real[], 1::real)") == []
    assert one(db, "SELECT pgml.norm_l1('{}'::real[])") == 0
    assert one(db, "SELECT pgml.dot_product('{}'::real[], '{}'::real[])") == 0


def test_bad_input(db: psycopg.Connection[Any]) -> None:
    with pytest.raises(errors.ArraySubscriptError, match="different lengths: 2 and 3"):
        db.execute("SELECT pgml.distance_l2(ARRAY[1, 2]::real[], ARRAY[1, 2, 3]::real[])")
    with pytest.raises(errors.ArraySubscriptError):
        db.execute("SELECT pgml.add(ARRAY[1, 2]::float8[], ARRAY[1]::float8[])")
    with pytest.raises(errors.NullValueNotAllowed):
        db.execute("SELECT pgml.norm_l2(ARRAY[1, NULL]::real[])")
    with pytest.raises(errors.DivisionByZero):
        db.execute("SELECT pgml.normalize_l2(ARRAY[0, 0]::real[])")
    assert one(db, "SELECT 1") == 1


def test_in_views_and_indexes(db: psycopg.Connection[Any]) -> None:
    table, view = unique("embeddings"), unique("embedding_norms")
    db.execute(f"CREATE TABLE {table} (id int, v real[])")
    try:
        db.execute(f"INSERT INTO {table} VALUES (1, ARRAY[3, 4]), (2, ARRAY[6, 8])")
        db.execute(f"CREATE INDEX ON {table} ((pgml.norm_l2(v)))")
        db.execute(f"CREATE VIEW {view} AS SELECT id, pgml.norm_l2(v) AS n FROM {table}")
        assert db.execute(f"SELECT * FROM {view} ORDER BY id").fetchall() == [(1, 5.0), (2, 10.0)]
        volatility = db.execute(
            "SELECT DISTINCT provolatile, proparallel, proisstrict FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'pgml' AND p.proname = ANY (%s) AND p.prokind = 'f'",
            [sorted(set(ELEMENTWISE) | set(NORMS) | set(PAIRS))],
        ).fetchall()
        assert volatility == [("i", "s", True)]
    finally:
        db.execute(f"DROP TABLE {table} CASCADE")
