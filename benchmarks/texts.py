"""A private PostgreSQL with a table ``t(id, body)`` of texts, and a proxy in front of it
with the embedding model loaded, and one query timed in a transaction: what the
benchmarks of calls over many rows share."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.pgserver import PostgresCluster  # noqa: E402
from tests.support.proxyproc import ProxyProcess  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@contextlib.contextmanager
def texts_and_proxy(rows: int, distinct: int, label: str) -> Iterator[ProxyProcess]:
    """``rows`` rows of ``distinct`` texts ('review number K of a LABEL test'), and the
    proxy, its model loaded before anything is measured."""
    cluster = PostgresCluster().start()
    proxy = ProxyProcess("--upstream", cluster.dsn(), "--log-level", "warning").start()
    try:
        cluster.psql(
            f"CREATE TABLE t AS SELECT i AS id, 'review number ' || (i % {distinct}) || "
            f"' of a {label} test' AS body FROM generate_series(1, {rows}) AS i"
        )
        with psycopg.connect(proxy.dsn()) as conn:
            conn.execute("SELECT pgml.embed(%s, 'warm up')", [MODEL]).fetchone()
        yield proxy
    finally:
        proxy.stop()
        cluster.stop()


def timed(dsn: str, sql: str, begin: str) -> tuple[tuple[int, int], float]:
    """The first two columns of ``sql``'s one row, and its seconds, in a transaction
    begun with ``begin`` (``BEGIN`` or ``BEGIN READ ONLY``) and rolled back."""
    with psycopg.connect(dsn) as conn:
        conn.execute(begin)
        started = time.monotonic()
        row = conn.execute(sql).fetchone()
        took = time.monotonic() - started
        conn.rollback()
    assert row is not None
    return (row[0], row[1]), took
