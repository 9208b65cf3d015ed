"""Pass-through beside model work: p99 of ``SELECT 1`` on one connection, alone and while
another client keeps the proxy's model busy.

The other client sends, over and over, a per-row ``pgml.embed`` (all-MiniLM-L6-v2) over
``--rows`` texts that are new every time (so every row runs the model); the reference is
the same statement with ``md5`` in the call's place, which PostgreSQL alone works on. The
control client sends ``SELECT 1`` every ``--interval-ms`` on a fixed schedule and times
each answer from when it was due. Target (issue 21): p99 at most 5 ms above the figure
with nothing else running.

    .venv/bin/python benchmarks/beside_models.py --seconds 10 --rows 500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import rawclient as rc  # noqa: E402
from tests.support.fuzz import MODEL  # noqa: E402
from tests.support.stack import private_stack  # noqa: E402
from tests.support.stall import measure  # noqa: E402

TARGET = 0.005


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--interval-ms", type=float, default=5.0)
    args = parser.parse_args()

    with private_stack(rows=args.rows) as stack:
        fresh = "body || ' ' || random()::text"
        work = {
            "per-row pgml.embed": f"pgml.embed('{MODEL}', {fresh})",
            "the same with md5 (PostgreSQL's work alone)": f"md5({fresh})",
        }
        columns = ("other client sends", "times sent", "p99 alone", "p99 meanwhile")
        print("| " + " | ".join((*columns, "increase", "max meanwhile", "target (+5 ms)")) + " |")
        print("|---" * (len(columns) + 3) + "|")
        for name, call in work.items():
            sql = f"SELECT id, {call} FROM {stack.table}"
            stall = measure(stack.proxy.port, rc.query(sql), args.seconds, args.interval_ms / 1000)
            print(
                f"| {name} | {stall.sent} | {stall.idle.percentile(99) * 1000:.1f} ms"
                f" | {stall.loaded.percentile(99) * 1000:.1f} ms"
                f" | {stall.p99_increase * 1000:+.1f} ms | {stall.loaded.max * 1000:.1f} ms"
                f" | {'met' if stall.p99_increase <= TARGET else 'missed'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
