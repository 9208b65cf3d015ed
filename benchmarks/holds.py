"""What holding the client's backend costs a call, against another checkout's proxy.

While a call works (past 50 ms), the client's backend waits inside a statement so that
PostgreSQL's cancels reach it.  This times ``pgml.transform`` with a tiny GPT-2 and a fixed
number of new tokens (so a fixed amount of work) through this checkout's proxy and through
the proxy of ``--reference`` (a ``git worktree`` of an earlier commit), both in front of
one PostgreSQL, the two alternating call by call.  The calls' medians and their ratio are
printed per length of work; the difference is what each way of holding adds.

    git worktree add /tmp/reference <commit>
    .venv/bin/python benchmarks/holds.py --reference /tmp/reference --calls 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.pgserver import PostgresCluster  # noqa: E402
from tests.support.proxyproc import ProxyProcess  # noqa: E402
from tests.support.tiny_pipelines import (  # noqa: E402
    LONG,
    build_long_generator,
    build_pipeline_models,
)

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def call(tokens: int) -> str:
    task = f'{{"task": "text-generation", "model": "{LONG}"}}'
    args = f'{{"min_new_tokens": {tokens}, "max_new_tokens": {tokens}, "do_sample": false}}'
    return f"SELECT pgml.transform('{task}'::jsonb, '{args}', ARRAY['hello'])"


def timed(conn: psycopg.Connection[tuple[object, ...]], sql: str) -> float:
    began = time.perf_counter()
    conn.execute(sql).fetchall()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="another checkout")
    parser.add_argument("--calls", type=int, default=30, help="calls per length and proxy")
    parser.add_argument("--tokens", type=int, nargs="+", default=[20, 100, 400, 1600])
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        models = build_long_generator(build_pipeline_models(Path(scratch) / "models"))
        cluster = PostgresCluster().start()
        flags = (
            "--upstream",
            cluster.dsn(),
            "--models-dir",
            str(models),
            "--max-new-tokens",
            "100000",
        )
        proxies = {
            "this": ProxyProcess(*flags, env=OFFLINE),
            "reference": ProxyProcess(*flags, env=OFFLINE, cwd=options.reference),
        }
        try:
            for proxy in proxies.values():
                proxy.start()
            conns = {k: psycopg.connect(p.dsn(), autocommit=True) for k, p in proxies.items()}
            print(f"{'tokens':>6} {'this (ms)':>10} {'reference (ms)':>15} {'ratio':>6}")
            for tokens in options.tokens:
                sql = call(tokens)
                for conn in conns.values():  # loaded, warmed
                    timed(conn, sql)
                times: dict[str, list[float]] = {k: [] for k in conns}
                for _ in range(options.calls):
                    for name, conn in conns.items():
                        times[name].append(timed(conn, sql))
                this, reference = (statistics.median(times[k]) for k in ("this", "reference"))
                print(
                    f"{tokens:>6} {this * 1000:>10.1f} {reference * 1000:>15.1f} "
                    f"{this / reference:>6.3f}"
                )
            for conn in conns.values():
                conn.close()
        finally:
            for proxy in proxies.values():
                proxy.stop()
            cluster.stop()


if __name__ == "__main__":
    main()
