"""pgml.train and pgml.predict of classic models against the bare library, in one run.

Starts a private PostgreSQL and a proxy, fills a table with N rows of F ``real`` features
and a label, and measures, each against its reference in the same run:
- ``train``: ``pgml.train`` of xgboost and of a random forest (the relation read through
  the caller's session, the split, the fit, the scoring and the stored model all inside
  the call), against the library's own ``fit`` on the same training rows, already in
  memory; interleaved rounds, a new project each round;
- ``batch``: ``SELECT pgml.predict('p', ARRAY[f1, ...]) FROM t`` fetched whole with
  psycopg, against reading ``SELECT f1, ... FROM t`` straight from PostgreSQL with psycopg
  and one ``model.predict`` over the arrays;
- ``latency``: a prepared single-row ``SELECT pgml.predict('p', $1::real[])`` through the
  proxy, against the bare ``model.predict`` of one row (and, for scale, a prepared
  ``SELECT $1::real[]`` through the proxy).

    .venv/bin/python benchmarks/classic.py --rows 100000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handlers.classic.algorithms import DEFAULTS, REGRESSION, estimator_class  # noqa: E402
from tests.support.pgserver import PostgresCluster  # noqa: E402
from tests.support.proxyproc import ProxyProcess  # noqa: E402

HYPERPARAMS: dict[str, dict[str, Any]] = {
    "xgboost": {"n_estimators": 100, "max_depth": 6, "n_jobs": 2, "random_state": 0},
    "random_forest": {"n_estimators": 20, "max_depth": 12, "n_jobs": 2, "random_state": 0},
}
"""The same settings for ``pgml.train`` and the library: both use the 2 cores."""
TEST_SIZE = 0.25


def fill(cluster: PostgresCluster, rows: int, features: int) -> None:
    """Table ``t``: ``f1 .. fF real`` drawn at random, ``label`` a noisy function of them."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    y = x[:, 0] * 3 + np.sin(x[:, 1]) * 2 + x[:, 2] * x[:, 3] + rng.normal(size=rows) * 0.1
    columns = ", ".join(f"f{i + 1} real" for i in range(features))
    cluster.psql(f"CREATE TABLE t ({columns}, label real)")
    with (
        psycopg.connect(cluster.dsn(), autocommit=True) as conn,
        conn.cursor().copy("COPY t FROM STDIN") as copy,
    ):
        for row, label in zip(x.tolist(), y.astype(np.float32).tolist(), strict=True):
            copy.write_row((*row, label))
    cluster.psql("VACUUM ANALYZE t")


def read_arrays(dsn: str, features: int) -> tuple[Any, Any]:
    """Features and labels as psycopg reads them from PostgreSQL."""
    names = ", ".join(f"f{i + 1}" for i in range(features))
    with psycopg.connect(dsn) as conn:
        found = conn.execute(f"SELECT {names}, label FROM t").fetchall()
    data = np.array(found, dtype=float)
    return data[:, :-1], data[:, -1]


def library(algorithm: str) -> Any:
    return estimator_class(REGRESSION, algorithm)(
        **(DEFAULTS.get(algorithm, {}) | HYPERPARAMS[algorithm])
    )


def train_speed(
    proxy: ProxyProcess, x: Any, y: Any, rounds: int
) -> dict[str, dict[str, list[float]]]:
    """Seconds per ``pgml.train`` (and the fit time it records) and per library fit."""
    cut = len(y) - round(len(y) * TEST_SIZE)
    found: dict[str, dict[str, list[float]]] = {}
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for algorithm, params in HYPERPARAMS.items():
            times: dict[str, list[float]] = {"pgml.train": [], "recorded fit": [], "library": []}
            for index in range(rounds):
                project = f"bench {algorithm} {index}"
                started = time.perf_counter()
                conn.execute(
                    "SELECT * FROM pgml.train(%s, 'regression', 't', 'label', %s, %s, "
                    "test_size => %s, test_sampling => 'last')",
                    [project, algorithm, json.dumps(params), TEST_SIZE],
                ).fetchall()
                times["pgml.train"].append(time.perf_counter() - started)
                (metrics,) = conn.execute(
                    "SELECT m.metrics FROM pgml.models m JOIN pgml.projects p "
                    "ON p.id = m.project_id WHERE p.name = %s",
                    [project],
                ).fetchone() or (None,)
                times["recorded fit"].append(float(metrics["fit_time"]))
                started = time.perf_counter()
                library(algorithm).fit(x[:cut], y[:cut])
                times["library"].append(time.perf_counter() - started)
            found[algorithm] = times
    return found


def batch_speed(
    proxy: ProxyProcess, cluster: PostgresCluster, model: Any, features: int, rounds: int
) -> dict[str, list[float]]:
    """Seconds for every row's prediction: through the proxy, and read + predict by hand."""
    names = ", ".join(f"f{i + 1}" for i in range(features))
    sql = f"SELECT pgml.predict('bench xgboost 0', ARRAY[{names}]) FROM t"
    times: dict[str, list[float]] = {"proxy": [], "psycopg + predict": []}
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as through,
        psycopg.connect(cluster.dsn(), autocommit=True) as direct,
    ):
        through.execute(sql + " LIMIT 10").fetchall()  # loads the model
        for _ in range(rounds):
            started = time.perf_counter()
            rows = through.execute(sql).fetchall()
            times["proxy"].append(time.perf_counter() - started)
            started = time.perf_counter()
            data = np.array(direct.execute(f"SELECT {names} FROM t").fetchall(), dtype=float)
            expected = model.predict(data)
            times["psycopg + predict"].append(time.perf_counter() - started)
            assert len(rows) == len(expected)
    return times


def latency(proxy: ProxyProcess, model: Any, x: Any, iterations: int) -> dict[str, list[float]]:
    """Milliseconds per single-row prediction, taking turns call by call."""
    sql = "SELECT pgml.predict('bench xgboost 0', %s::real[])"
    times: dict[str, list[float]] = {"proxy": [], "model.predict": [], "proxy SELECT $1": []}
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        rows = [[float(v) for v in row] for row in x[:iterations]]
        for row in rows[:50]:  # warm up: prepares the statements
            conn.execute(sql, [row], prepare=True).fetchone()
            conn.execute("SELECT %s::real[]", [row], prepare=True).fetchone()
        for row in rows:
            started = time.perf_counter()
            conn.execute(sql, [row], prepare=True).fetchone()
            times["proxy"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            model.predict(np.array([row], dtype=float))
            times["model.predict"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            conn.execute("SELECT %s::real[]", [row], prepare=True).fetchone()
            times["proxy SELECT $1"].append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=2000, help="single-row calls")
    args = parser.parse_args()

    cluster = PostgresCluster().start()
    work = Path(tempfile.mkdtemp(prefix="pgml-classic-"))
    proxy = ProxyProcess(
        "--upstream", cluster.dsn(), "--cache-dir", str(work), "--log-level", "warning"
    ).start()
    try:
        fill(cluster, args.rows, args.features)
        x, y = read_arrays(cluster.dsn(), args.features)
        print(f"{args.rows} rows, {args.features} features, {args.rounds} rounds")
        for algorithm, times in train_speed(proxy, x, y, args.rounds).items():
            medians = {k: statistics.median(v) for k, v in times.items()}
            print(
                f"train {algorithm}: "
                + ", ".join(f"{k} {v:.2f} s" for k, v in medians.items())
                + f"; library / pgml.train {medians['library'] / medians['pgml.train']:.3f}"
            )
        cut = len(y) - round(len(y) * TEST_SIZE)
        model = library("xgboost").fit(x[:cut], y[:cut])
        batch = {
            k: statistics.median(v)
            for k, v in batch_speed(proxy, cluster, model, args.features, args.rounds).items()
        }
        print(
            "batch predict: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in batch.items())
            + f"; reference / proxy {batch['psycopg + predict'] / batch['proxy']:.3f}"
        )
        single = {
            k: statistics.median(v) for k, v in latency(proxy, model, x, args.iterations).items()
        }
        print(
            "single-row latency (median): "
            + ", ".join(f"{k} {v:.3f} ms" for k, v in single.items())
            + f"; proxy - model.predict {single['proxy'] - single['model.predict']:+.3f} ms"
        )
    finally:
        proxy.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
