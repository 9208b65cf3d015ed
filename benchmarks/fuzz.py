"""The fuzz test, longer: seeded, mutated frontend traffic against a private proxy.

Plays cases from ``tests/support/fuzz.py`` from several threads, in rounds; after each
round it counts the upstream backends the round's sessions left behind (and ends them),
checks that the proxy is alive and answers (restarting it after a crash), and counts
internal errors (``XX000`` answers and tracebacks in the proxy's log).  A control client
sends ``SELECT 1`` every 10 ms throughout; answers slower than ``--slow-ms`` are counted.

    .venv/bin/python benchmarks/fuzz.py --seconds 300 --seed 1
    .venv/bin/python benchmarks/fuzz.py --seed 1 --replay 1234    # one case, verbosely

Every count but the first (sessions) should be zero.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.fuzz import TrafficGenerator  # noqa: E402
from tests.support.fuzzrun import (  # noqa: E402
    ControlClient,
    Latencies,
    fuzz,
    play,
    terminate_backends,
    wait_for_backends,
)
from tests.support.stack import Stack, private_stack  # noqa: E402

TRACEBACK = re.compile(r"^Traceback \(most recent call last\):$", re.MULTILINE)


def replay(stack: Stack, generator: TrafficGenerator, index: int) -> None:
    case = generator.case(index)
    print(f"case {case.name}: {case.size} bytes in {len(case.steps)} writes, ends {case.ending}")
    outcome = play(case, stack.proxy.port)
    print(f"closed by the server: {outcome.closed_by_server}, after {outcome.elapsed:.2f} s")
    for error in outcome.errors:
        print(f"  {error.get('S')} {error.get('C')} {error.get('M')}")
    left = wait_for_backends(stack.cluster, 2.0)
    print(f"backends left after 2 s: {left}")
    print(stack.proxy.log()[-3000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--round-seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0, help="size of the heavy inputs")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slow-ms", type=float, default=100.0)
    parser.add_argument("--gone-within", type=float, default=2.0)
    parser.add_argument("--replay", type=int, help="play this one case and show what happened")
    args = parser.parse_args()

    with private_stack("--batch-size", "4") as stack:
        generator = TrafficGenerator(args.seed, stack.table, scale=args.scale)
        if args.replay is not None:
            replay(stack, generator, args.replay)
            return
        totals = {"sessions": 0, "crashes": 0, "internal errors": 0, "leaked backends": 0}
        slow = 0
        control_all = Latencies([], [])
        log_seen = 0
        first = 0
        began = time.monotonic()
        print(f"seed {args.seed}, scale {args.scale}, {args.workers} workers")
        while time.monotonic() - began < args.seconds:
            seconds = min(args.round_seconds, args.seconds - (time.monotonic() - began))
            with ControlClient(stack.proxy.port, interval=0.01) as control:
                report = fuzz(
                    generator,
                    stack.proxy.port,
                    seconds,
                    workers=args.workers,
                    first=first,
                    alive=stack.proxy_alive,
                )
            first += report.sessions + 1000
            left = wait_for_backends(stack.cluster, args.gone_within)
            terminate_backends(stack.cluster)
            crashed = not stack.proxy_alive() or not stack.answers()
            log = stack.proxy.log()
            tracebacks = len(TRACEBACK.findall(log, log_seen))
            log_seen = len(log)
            internal = report.internal_errors + tracebacks
            round_slow = control.latencies.slow(args.slow_ms / 1000)
            totals["sessions"] += report.sessions
            totals["crashes"] += int(crashed)
            totals["internal errors"] += internal
            totals["leaked backends"] += len(left)
            slow += round_slow
            control_all.samples += control.latencies.samples
            control_all.failures += control.latencies.failures
            print(
                f"round: {report.sessions} sessions, crashed {crashed}, {internal} internal errors"
                f" ({report.internal_errors} answered XX000, {tracebacks} tracebacks),"
                f" {len(left)} leaked backends, {round_slow} slow control answers;"
                f" control {control.latencies.summary()}",
                flush=True,
            )
            for outcome in report.outcomes_with_internal_errors[:3]:
                print(f"    XX000: {outcome.case.name}")
            if crashed:
                print(stack.proxy.log()[-2000:])
                stack.restart_proxy()
                log_seen = 0
        print()
        print("| count | value |")
        print("|---|---|")
        for name, value in totals.items():
            print(f"| {name} | {value} |")
        print(f"| slow control answers (> {args.slow_ms:g} ms) | {slow} |")
        print(f"\ncontrol client: {control_all.summary()}")


if __name__ == "__main__":
    main()
