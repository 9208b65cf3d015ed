"""A pgml call over many rows: throughput, and the proxy's memory while it streams.

Loads N rows (D distinct texts) into a private PostgreSQL, then through the proxy runs
``SELECT id, array_length(pgml.embed(model, body), 1) FROM t`` (every row streams back)
and reports rows per second against the same query without the pgml call, and the
proxy's peak RSS against its RSS before the query.

    .venv/bin/python benchmarks/embed_stream.py --rows 1000000 --distinct 1000 [--read cursor]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.memory import PeakRss, rss_mb  # noqa: E402
from benchmarks.texts import MODEL, texts_and_proxy  # noqa: E402


def timed_rows(dsn: str, sql: str, read: str) -> tuple[int, float]:
    """Rows read and seconds taken: through a server-side cursor (``cursor``: DECLARE and
    FETCH, 10,000 rows at a time) or as one statement's result (``stream``)."""
    started = time.monotonic()
    rows = 0
    with psycopg.connect(dsn) as conn:
        if read == "cursor":
            with conn.cursor(name="stream") as cursor:
                cursor.itersize = 10_000
                cursor.execute(sql)
                for _ in cursor:
                    rows += 1
        else:
            for _ in conn.cursor().stream(sql, size=10_000):
                rows += 1
    return rows, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--distinct", type=int, default=1000)
    parser.add_argument(
        "--read",
        choices=("cursor", "stream"),
        default="stream",
        help="a server-side cursor (DECLARE/FETCH), or the statement's result as it streams",
    )
    args = parser.parse_args()
    with texts_and_proxy(args.rows, args.distinct, "streaming") as proxy:
        pid = proxy.process.pid  # type: ignore[union-attr]
        before = rss_mb(pid)
        with PeakRss(pid) as peak_rss:
            plain_rows, plain_s = timed_rows(
                proxy.dsn(),
                "SELECT id, array_length(string_to_array(body, ' '), 1) FROM t",
                args.read,
            )
            pgml_rows, pgml_s = timed_rows(
                proxy.dsn(),
                f"SELECT id, array_length(pgml.embed('{MODEL}', body), 1) FROM t",
                args.read,
            )
        peak = peak_rss.mb
        assert plain_rows == pgml_rows == args.rows
        print(f"rows: {args.rows}, distinct texts: {args.distinct}, read: {args.read}")
        print(f"plain query:  {plain_rows / plain_s:10.0f} rows/s ({plain_s:.1f} s)")
        print(f"pgml.embed:   {pgml_rows / pgml_s:10.0f} rows/s ({pgml_s:.1f} s)")
        print(f"ratio pgml / plain: {plain_s / pgml_s:.3f}")
        print(f"proxy RSS: {before:.0f} MB before, {peak:.0f} MB peak (+{peak - before:.0f} MB)")


if __name__ == "__main__":
    main()
