"""Single-row ``pgml.predict`` latency with the serving privilege check, against without.

Starts a private PostgreSQL, tunes a small text classifier once, and runs two proxies in
front of the same database: the proxy as it ships, which asks ``pgml.authorize_serving``
in the caller's session before it serves a project, and ``benchmarks/unchecked_proxy.py``,
the same proxy with that check taken out. A role with the catalog's default grants (not a
superuser) then makes prepared single-row ``SELECT pgml.predict('bench', $1)`` round trips,
alternating between the two proxies call by call, and the medians and p90s are compared.

    .venv/bin/python benchmarks/serve_access.py --iterations 2000
    .venv/bin/python benchmarks/serve_access.py --model sentence-transformers/all-MiniLM-L6-v2

Without ``--model`` the classifier is a tiny random DistilBERT built on the spot (the check
costs the same whatever the model; a small one keeps the difference visible).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.guide_data import review  # noqa: E402
from tests.support.pgserver import PostgresCluster  # noqa: E402
from tests.support.proxyproc import ProxyProcess  # noqa: E402

PROJECT = "bench"
ROLE = "bench_reader"
TINY = "distilbert-base-uncased"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def proxy(cluster: PostgresCluster, work: Path, models: Path | None, module: str) -> ProxyProcess:
    return ProxyProcess(
        "--upstream",
        cluster.dsn(),
        "--cache-dir",
        str(work / module.replace(".", "_")),
        "--device",
        "cpu",
        "--log-level",
        "warning",
        *(["--models-dir", str(models)] if models else []),
        env={"HF_HUB_OFFLINE": "1"},
        module=module,
    ).start()


def tune(checked: ProxyProcess, cluster: PostgresCluster, model: str, rows: int) -> None:
    rng = random.Random(1)
    cluster.psql("CREATE TABLE reviews (text text, label int)")
    with (
        psycopg.connect(cluster.dsn(), autocommit=True) as conn,
        conn.cursor().copy("COPY reviews FROM STDIN") as copy,
    ):
        for i in range(rows):
            copy.write_row((review(rng, i % 2 == 1), i % 2))
    with psycopg.connect(checked.dsn(), autocommit=True) as conn:
        conn.execute(
            "SELECT * FROM pgml.tune(%s, task => 'text-classification', "
            "relation_name => 'reviews', y_column_name => 'label', model_name => %s, "
            """hyperparams => '{"num_train_epochs": 1}', test_size => 0.25)""",
            [PROJECT, model],
        ).fetchall()
    cluster.psql(f"CREATE ROLE {ROLE} LOGIN")  # PUBLIC's grants: it may read the catalog


def differ_in_the_check_alone(
    cluster: PostgresCluster, checked: ProxyProcess, unchecked: ProxyProcess
) -> None:
    """With SELECT on pgml.models revoked the shipped proxy refuses the role and the
    reference serves it; with the grant back both serve it."""
    sql = f"SELECT pgml.predict('{PROJECT}', 'great')"
    cluster.psql("REVOKE SELECT ON pgml.models FROM PUBLIC")
    try:
        with psycopg.connect(checked.dsn(ROLE), autocommit=True) as conn:
            try:
                conn.execute(sql)
                raise SystemExit("the proxy served a role that may not read pgml.models")
            except psycopg.errors.InsufficientPrivilege:
                pass
        with psycopg.connect(unchecked.dsn(ROLE), autocommit=True) as conn:
            conn.execute(sql).fetchone()
    finally:
        cluster.psql("GRANT SELECT ON pgml.models TO PUBLIC")


def measure(
    proxies: dict[str, ProxyProcess], cluster: PostgresCluster, iterations: int
) -> dict[str, list[float]]:
    """Milliseconds per prepared single-row predict, the proxies taking turns call by call;
    and, straight to PostgreSQL as the same role, the check's own statement against a
    statement that does nothing (its server-side cost)."""
    rng = random.Random(2)
    texts = [review(rng, i % 2 == 0) for i in range(iterations)]
    model = int(cluster.psql(f"SELECT id FROM pgml.deployed_models WHERE name = '{PROJECT}'"))
    statements = {
        "checked": f"SELECT pgml.predict('{PROJECT}', %s)",
        "unchecked": f"SELECT pgml.predict('{PROJECT}', %s)",
        "check alone": f"SELECT pgml.authorize_serving('{PROJECT}', {model}), %s::text",
        "nothing": "SELECT NULL::void, %s::text",
    }
    dsns = {k: p.dsn(ROLE) for k, p in proxies.items()}
    dsns |= {"check alone": cluster.dsn(ROLE), "nothing": cluster.dsn(ROLE)}
    connections = {k: psycopg.connect(dsn, autocommit=True) for k, dsn in dsns.items()}
    timings: dict[str, list[float]] = {k: [] for k in connections}
    try:
        for text in texts[:50]:  # warm up: loads the model, prepares the statements
            for kind, conn in connections.items():
                conn.execute(statements[kind], [text], prepare=True).fetchone()
        for index, text in enumerate(texts):
            order = list(connections.items())
            for kind, conn in order if index % 2 == 0 else reversed(order):
                started = time.perf_counter()
                conn.execute(statements[kind], [text], prepare=True).fetchone()
                timings[kind].append((time.perf_counter() - started) * 1000)
    finally:
        for conn in connections.values():
            conn.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=2000, help="calls through each proxy")
    parser.add_argument("--rows", type=int, default=200, help="rows the classifier is tuned on")
    parser.add_argument(
        "--model", default=None, help=f"a model to tune (default: a tiny random {TINY})"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pgml-serve-access-"))
    models: Path | None = None
    if args.model is None:
        from tests.support.tiny_models import build_models_dir

        models = build_models_dir(work / "models")
    cluster = PostgresCluster().start()
    started: list[ProxyProcess] = []
    try:
        checked = proxy(cluster, work, models, "proxy")
        started.append(checked)
        tune(checked, cluster, args.model or TINY, args.rows)
        unchecked = proxy(cluster, work, models, "benchmarks.unchecked_proxy")
        started.append(unchecked)
        differ_in_the_check_alone(cluster, checked, unchecked)
        timings = measure({"checked": checked, "unchecked": unchecked}, cluster, args.iterations)
    finally:
        for process in started:
            process.stop()
        cluster.stop()
    report(timings, args)


def report(timings: dict[str, list[float]], args: Any) -> None:
    checked, unchecked = timings["checked"], timings["unchecked"]
    print(
        f"prepared single-row pgml.predict as a non-superuser role, {args.iterations} calls "
        f"through each proxy, interleaved; model {args.model or 'tiny ' + TINY}"
    )
    print()
    print("| figure | with the check (ms) | without (ms) | difference | target |")
    print("|---|---|---|---|---|")
    for label, q in (("median", 0.5), ("p90", 0.9)):
        a, b = quantile(checked, q), quantile(unchecked, q)
        target = "<= +0.1 ms" if label == "median" else ""
        print(f"| {label} | {a:.3f} | {b:.3f} | {a - b:+.3f} ms | {target} |")
    print(
        f"| mean | {statistics.fmean(checked):.3f} | {statistics.fmean(unchecked):.3f} | "
        f"{statistics.fmean(checked) - statistics.fmean(unchecked):+.3f} ms | |"
    )
    alone, nothing = quantile(timings["check alone"], 0.5), quantile(timings["nothing"], 0.5)
    print(
        f"| median, straight to PostgreSQL: the check's statement against one doing nothing "
        f"| {alone:.3f} | {nothing:.3f} | {alone - nothing:+.3f} ms | |"
    )


if __name__ == "__main__":
    main()
