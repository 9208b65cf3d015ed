"""Event-loop stalls: p99 of ``SELECT 1`` on one connection, alone and while another
client sends a statement that is heavy for the proxy to take apart.

The heavy statements are the issue's: a pgml statement of 8 MB, a statement with 3,000
pgml calls, 20,000 nested parentheses (``--scale`` shrinks them).  The control client runs
in its own process and sends ``SELECT 1`` every ``--interval-ms`` on a fixed schedule,
pipelined, and times each from when it was due, so a stall counts in every answer it
delays.  Target: p99 at most 20 ms above the figure with nothing else running.  For
reference, the same statement with a plain SQL value in place of the pgml call, which the
proxy only relays: what PostgreSQL's own work on it costs the control client on a machine
whose cores the server, the proxy and both clients share.

    .venv/bin/python benchmarks/loop_stall.py --seconds 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.stack import private_stack  # noqa: E402
from tests.support.stall import heavy_statements, measure  # noqa: E402

TARGET = 0.020


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--interval-ms", type=float, default=5.0)
    args = parser.parse_args()

    with private_stack() as stack:
        columns = (
            "other client sends",
            "times sent",
            "p99 alone",
            "p99 meanwhile",
            "increase",
            "max meanwhile",
            "target (+20 ms)",
            "plain twin: p99 increase",
        )
        print("| " + " | ".join(columns) + " |")
        print("|---" * len(columns) + "|")
        twins = heavy_statements(args.scale, twin=True)
        for name, message in heavy_statements(args.scale).items():
            stall = measure(stack.proxy.port, message, args.seconds, args.interval_ms / 1000)
            plain = measure(stack.proxy.port, twins[name], args.seconds, args.interval_ms / 1000)
            print(
                f"| {name} | {stall.sent} | {stall.idle.percentile(99) * 1000:.1f} ms"
                f" | {stall.loaded.percentile(99) * 1000:.1f} ms"
                f" | {stall.p99_increase * 1000:+.1f} ms | {stall.loaded.max * 1000:.1f} ms"
                f" | {'met' if stall.p99_increase <= TARGET else 'missed'}"
                f" | {plain.p99_increase * 1000:+.1f} ms |",
                flush=True,
            )


if __name__ == "__main__":
    main()
