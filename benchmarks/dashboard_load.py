"""Pass-through throughput with the dashboard open and refreshing, against without.

One private PostgreSQL (pgbench scale 10) and one proxy with ``--dashboard-port``; the
catalog holds a project whose model has a few hundred training-log rows, so that the
model page draws real curves.  Each round runs ``pgbench -S`` through the proxy once
alone and once while a client fetches the dashboard's pages (projects, project, model,
jobs, /metrics) every ``--interval`` seconds, as an open browser tab refreshing would;
the order alternates between rounds.  Reports the median tps of each and their ratio.

    .venv/bin/python benchmarks/dashboard_load.py --seconds 10 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.passthrough import pgbench, pgbench_init, wait_for_port  # noqa: E402
from tests.support.pgserver import BIN, PostgresCluster, free_port  # noqa: E402
from tests.support.proxyproc import ProxyProcess  # noqa: E402
from tests.support.webclient import logged_in  # noqa: E402

PAGES = ("/", "/projects/{project}", "/models/{model}", "/jobs", "/metrics")


def fill_catalog(proxy: ProxyProcess, cluster: PostgresCluster, log_rows: int) -> dict[str, int]:
    """A project with one deployed model and ``log_rows`` training-log rows."""
    subprocess.run(
        [str(BIN / "psql"), "-X", "-q", proxy.dsn(), "-c", "SELECT pgml.version()"],
        check=True,
        capture_output=True,
    )  # the first pgml call creates the catalog
    metrics = {"f1": 0.91, "accuracy": 0.9, "before_tuning": {"f1": 0.41}, "train_time": 60.0}
    logs = ", ".join(
        "(1, 1, '"
        + json.dumps({"step": i, "max_steps": log_rows, "epoch": i / log_rows, "loss": 1 / i})
        + "')"
        for i in range(1, log_rows + 1)
    )
    cluster.psql(
        "INSERT INTO pgml.projects (name, task) VALUES ('bench', 'text-classification');"
        "INSERT INTO pgml.snapshots (relation_name, y_column_name, test_size, test_sampling,"
        " analysis) VALUES ('reviews', ARRAY['label'], 0.2, 'random', "
        """'{"rows": 1000, "train_rows": 800, "test_rows": 200}');"""
        "INSERT INTO pgml.models (project_id, snapshot_id, algorithm, status, metrics) "
        f"VALUES (1, 1, 'distilbert-base-uncased', 'successful', '{json.dumps(metrics)}');"
        "INSERT INTO pgml.deployments (project_id, model_id, strategy) "
        "VALUES (1, 1, 'new_score');"
        f"INSERT INTO pgml.logs (project_id, model_id, logs) VALUES {logs};"
    )
    return {"project": 1, "model": 1}


class Refresher(threading.Thread):
    """Fetches every dashboard page every ``interval`` seconds until stopped, logged in as
    the superuser (the pages read the catalog as the logged-in role)."""

    def __init__(self, base: str, ids: dict[str, int], interval: float) -> None:
        super().__init__(daemon=True)
        self.client = logged_in(base)
        self.paths = [page.format(**ids) for page in PAGES]
        self.interval = interval
        self.stopped = threading.Event()
        self.fetched = 0

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.monotonic()
            for path in self.paths:
                reply = self.client.get(path, follow=False)
                if reply.status != 200:
                    raise RuntimeError(f"{path}: HTTP {reply.status}")
                self.fetched += 1
            self.stopped.wait(max(0.0, self.interval - (time.monotonic() - started)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each pgbench run")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--mode", default="prepared", choices=["simple", "prepared"])
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    parser.add_argument("--log-rows", type=int, default=500)
    args = parser.parse_args()

    cluster = PostgresCluster().start()
    dashboard_port = free_port()
    proxy = ProxyProcess(
        "--upstream", cluster.dsn(), "--dashboard-port", str(dashboard_port)
    ).start()
    try:
        pgbench_init(cluster)
        wait_for_port(dashboard_port)
        ids = fill_catalog(proxy, cluster, args.log_rows)
        base = f"http://127.0.0.1:{dashboard_port}"
        alone: list[float] = []
        watched: list[float] = []
        fetched = 0
        for round_number in range(args.rounds):
            order = ("alone", "watched") if round_number % 2 == 0 else ("watched", "alone")
            for kind in order:
                if kind == "alone":
                    alone.append(pgbench(proxy.port, args.mode, args.clients, args.seconds)[0])
                    continue
                refresher = Refresher(base, ids, args.interval)
                refresher.start()
                watched.append(pgbench(proxy.port, args.mode, args.clients, args.seconds)[0])
                refresher.stopped.set()
                refresher.join()
                fetched += refresher.fetched
            print(
                f"  round {round_number + 1}: alone {alone[-1]:.0f} tps, "
                f"dashboard refreshing {watched[-1]:.0f} tps",
                flush=True,
            )
        ratio = statistics.median(watched) / statistics.median(alone)
        print()
        print(
            f"pgbench -S -M {args.mode} -c {args.clients}, {args.seconds} s, "
            f"{args.rounds} interleaved rounds; dashboard pages fetched: {fetched}"
        )
        print("| figure | dashboard refreshing | dashboard closed | ratio | target |")
        print("|---|---|---|---|---|")
        print(
            f"| tps (median) | {statistics.median(watched):.0f} | "
            f"{statistics.median(alone):.0f} | {ratio:.3f} | >= 0.98 |"
        )
    finally:
        proxy.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
