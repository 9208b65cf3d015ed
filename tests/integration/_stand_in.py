"""Differential tests of statements: the same SQL straight to PostgreSQL over a VOLATILE
SQL function standing in for a pgml function, and through the proxy over the pgml
function, their answers compared."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

from tests.integration._pgml import unique
from tests.support.pgserver import PostgresCluster

T = TypeVar("T")
W = TypeVar("W")


@contextlib.contextmanager
def stand_in(
    cluster: PostgresCluster,
    name: str,
    signature: str,
    returns: str,
    body: str,
    *,
    strict: bool = False,
) -> Iterator[str]:
    """``name(signature) RETURNS returns`` as the SQL ``body``, in a schema of its own so
    that PostgreSQL names its columns as it names the pgml call's; its qualified name, for
    the block's length."""
    schema = unique(f"{name}_ref")
    cluster.psql(
        f"CREATE SCHEMA {schema}; CREATE FUNCTION {schema}.{name}({signature}) RETURNS {returns} "
        f"LANGUAGE sql {'STRICT ' if strict else ''}VOLATILE AS $$ {body} $$"
    )
    try:
        yield f"{schema}.{name}"
    finally:
        cluster.psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def as_postgresql(
    answer: Callable[[W, str], T], direct: tuple[W, str], proxied: tuple[W, str]
) -> T:
    """``answer(where, function)`` from PostgreSQL over the stand-in and from the proxy
    over the pgml function (each a ``(where, function)``, ``where`` a DSN or a
    connection): equal, and PostgreSQL's is returned."""
    expected = answer(*direct)
    assert answer(*proxied) == expected
    return expected
