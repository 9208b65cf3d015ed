"""Upstream round trips of pgml statements, counted on the wire.

A counting relay sits between the proxy and PostgreSQL: the proxy's ``--upstream`` is
the relay, which forwards bytes both ways unchanged and counts, per upstream connection,
the turns of the conversation: each time the proxy writes after the server has written
(so pipelined requests count once, and every wait for an answer counts).  Each
statement is run after a warm-up of the same statement (model loaded, access check
passed once), and its turns are compared with the same client's ``SELECT 1`` (one round
trip, the floor of any statement).

    .venv/bin/python benchmarks/round_trips.py --rows 10000 --batch-size 256
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.serve_access import PROJECT, TINY, tune  # noqa: E402
from tests.support.pgserver import PostgresCluster  # noqa: E402
from tests.support.proxyproc import ProxyProcess  # noqa: E402
from tests.support.tiny_models import build_models_dir  # noqa: E402


class CountingRelay:
    """A TCP relay to PostgreSQL that counts each connection's turns, on a thread."""

    def __init__(self, port: int) -> None:
        self.upstream_port = port
        self.turns: dict[int, int] = {}
        self._last_from_server: dict[int, bool] = {}
        self._ids = count(1)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.port = 0

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            server = self.loop.run_until_complete(
                asyncio.start_server(self._accept, "127.0.0.1", 0)
            )
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        started.wait()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ident = next(self._ids)
        self.turns[ident] = 0
        self._last_from_server[ident] = True
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        def to_server(_: bytes) -> None:
            if self._last_from_server[ident]:
                self.turns[ident] += 1
            self._last_from_server[ident] = False

        def to_client(_: bytes) -> None:
            self._last_from_server[ident] = True

        await asyncio.gather(
            self._pump(reader, up_writer, to_server),
            self._pump(up_reader, writer, to_client),
            return_exceptions=True,
        )

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Callable[[bytes], None]
    ) -> None:
        try:
            while data := await reader.read(1 << 16):
                seen(data)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def snapshot(self) -> dict[int, int]:
        return dict(self.turns)


def turns_of(relay: CountingRelay, run: Callable[[], Any]) -> int:
    """Round trips the proxy made upstream while ``run`` ran, on every connection."""
    time.sleep(0.3)  # anything still in flight settles first
    before = relay.snapshot()
    run()
    time.sleep(0.3)
    after = relay.snapshot()
    return sum(n - before.get(k, 0) for k, n in after.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000, help="rows of the per-row call")
    parser.add_argument("--batch-size", type=int, default=256, help="the proxy's --batch-size")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pgml-round-trips-"))
    models = build_models_dir(work / "models")
    cluster = PostgresCluster().start()
    relay = CountingRelay(cluster.port)
    proxy = ProxyProcess(
        "--upstream",
        f"postgresql://postgres@127.0.0.1:{relay.port}/postgres",
        "--models-dir",
        str(models),
        "--cache-dir",
        str(work / "cache"),
        "--device",
        "cpu",
        "--batch-size",
        str(args.batch_size),
        "--log-level",
        "warning",
        env={"HF_HUB_OFFLINE": "1"},
    ).start()
    try:
        tune(proxy, cluster, TINY, 200)
        cluster.psql(
            f"CREATE TABLE t AS SELECT i AS id, 'review ' || i || ' of a great film' AS text "
            f"FROM generate_series(1, {args.rows}) AS i"
        )
        cluster.psql("GRANT SELECT ON t TO bench_reader")
        rows = []
        with psycopg.connect(proxy.dsn("bench_reader"), autocommit=True) as conn:
            literal = f"SELECT pgml.predict('{PROJECT}', 'I love SQL')"
            prepared = f"SELECT pgml.predict('{PROJECT}', %s)"
            per_row = f"SELECT id, pgml.predict('{PROJECT}', text) FROM t"
            per_row_bound = "SELECT id, pgml.predict(%s, text) FROM t"
            cases: list[tuple[str, Callable[[], Any], int]] = [
                ("`SELECT 1` (the floor)", lambda: conn.execute("SELECT 1").fetchall(), 0),
                (
                    f"literal call, simple protocol: `{literal}`",
                    lambda: conn.execute(literal).fetchall(),
                    0,
                ),
                (
                    "literal call, prepared (extended protocol, bound text)",
                    lambda: conn.execute(prepared, ["I love SQL"], prepare=True).fetchall(),
                    0,
                ),
                (
                    f"per-row call over {args.rows:,} distinct texts: `{per_row}`",
                    lambda: conn.execute(per_row).fetchall(),
                    math.ceil(args.rows / args.batch_size),
                ),
                (
                    "the same, extended protocol, the project bound (a first Parse each time: "
                    "the column-reading argument's type is asked)",
                    lambda: conn.execute(per_row_bound, [PROJECT]).fetchall(),
                    math.ceil(args.rows / args.batch_size),
                ),
            ]
            for name, run, batches in cases:
                run()  # warm up: the model loaded, the serving check passed once
                rows.append((name, turns_of(relay, run), batches))
    finally:
        proxy.stop()
        cluster.stop()
    print(f"rows: {args.rows}, --batch-size {args.batch_size}")
    print("| statement | upstream round trips | batches | round trips beyond one per batch |")
    print("|---|---|---|---|")
    for name, turns, batches in rows:
        print(f"| {name} | {turns} | {batches or '—'} | {turns - batches} |")


if __name__ == "__main__":
    main()
