"""A client that pipelines many statements at once: direct to PostgreSQL and through the proxy.

One raw client writes ``--statements`` simple Query messages (``SELECT 1``) behind a
first statement that sleeps ``--sleep`` seconds, reading the answers as they come, until
every ReadyForQuery has come: what a driver's pipeline mode or a script fed in one write
does, with a slow statement at its head.  Each round times PostgreSQL itself
and then the proxy; the report is each side's median and their ratio.  The proxy keeps
one entry per statement owed until its answer comes, so this is the test of that
queue's cost per entry when thousands are owed at once.

    .venv/bin/python benchmarks/pipelined.py --statements 100000 --sleep 0.5 --rounds 3
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration._wire import RawClient, query  # noqa: E402
from tests.support.pgserver import PostgresCluster  # noqa: E402
from tests.support.proxyproc import ProxyProcess  # noqa: E402


def pipelined(port: int, statements: int, sleep: float) -> float:
    """Seconds from the first byte written to the last ReadyForQuery read."""
    client = RawClient(port, timeout=600)
    client.login()
    payload = query(f"SELECT pg_sleep({sleep})") + query("SELECT 1") * (statements - 1)
    began = time.perf_counter()
    writer = threading.Thread(target=client.sock.sendall, args=(payload,))
    writer.start()  # the answers are read while the statements go out, as a driver does
    ready = 0
    while ready < statements:
        mtype, _ = client.read_message()
        ready += mtype == "Z"
    elapsed = time.perf_counter() - began
    writer.join()
    client.sock.shutdown(socket.SHUT_RDWR)
    client.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=100_000)
    parser.add_argument("--sleep", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cluster = PostgresCluster().start()
    proxy = ProxyProcess("--upstream", cluster.dsn(), "--log-level", "warning").start()
    try:
        times: dict[str, list[float]] = {"PostgreSQL": [], "proxy": []}
        for _ in range(args.rounds):
            times["PostgreSQL"].append(pipelined(cluster.port, args.statements, args.sleep))
            times["proxy"].append(pipelined(proxy.port, args.statements, args.sleep))
        direct = statistics.median(times["PostgreSQL"])
        for name, seconds in times.items():
            median = statistics.median(seconds)
            rounds = ", ".join(f"{s:.3f}" for s in seconds)
            print(
                f"{name:>10}: {args.statements} statements in {median:.3f} s median "
                f"({args.statements / median:,.0f}/s; rounds {rounds})"
                f"; {median / direct:.2f}x PostgreSQL's time"
            )
    finally:
        proxy.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
