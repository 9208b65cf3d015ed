"""A call PostgreSQL must see (in WHERE) over many rows, where the session may write (the
scope's rows materialised in temporary tables) against READ ONLY (its rows carried
through the proxy), and the same query with a string function in place of the call.

    .venv/bin/python benchmarks/read_only.py --rows 100000 --distinct 500 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.memory import PeakRss, rss_mb  # noqa: E402
from benchmarks.texts import MODEL, texts_and_proxy, timed  # noqa: E402

CALL = f"SELECT count(*), max(id) FROM t WHERE (pgml.embed('{MODEL}', body))[1] > -1"
PLAIN = "SELECT count(*), max(id) FROM t WHERE length(upper(body)) > -1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with texts_and_proxy(args.rows, args.distinct, "read-only") as proxy:
        pid = proxy.process.pid  # type: ignore[union-attr]
        before = rss_mb(pid)
        times: dict[str, list[float]] = {"plain": [], "materialised": [], "carried": []}
        peaks: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, sql, begin in (
                ("plain", PLAIN, "BEGIN READ ONLY"),
                ("materialised", CALL, "BEGIN"),
                ("carried", CALL, "BEGIN READ ONLY"),
            ):
                with PeakRss(pid) as peak:
                    answer, took = timed(proxy.dsn(), sql, begin)
                assert answer == (args.rows, args.rows), answer
                times[name].append(took)
                peaks[name] = max(peaks.get(name, 0.0), peak.mb)
        print(f"rows: {args.rows}, distinct texts: {args.distinct}, rounds: {args.rounds}")
        for name, taken in times.items():
            median = statistics.median(taken)
            print(
                f"{name:13} {args.rows / median:10.0f} rows/s (median {median:.2f} s, "
                f"min {min(taken):.2f}, max {max(taken):.2f}), proxy RSS peak "
                f"{peaks[name]:.0f} MB"
            )
        ratio = statistics.median(times["materialised"]) / statistics.median(times["carried"])
        print(f"ratio carried / materialised (rows/s): {ratio:.3f}")
        print(f"proxy RSS before: {before:.0f} MB")


if __name__ == "__main__":
    main()
