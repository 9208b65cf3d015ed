"""Tuning samples per second on a local Ray cluster against PyTorch's own launcher.

Starts a private PostgreSQL, a local Ray cluster (``ray start --head --num-cpus N``) and
two proxies over the same tiny text classifier (random weights, the tests' builder):
one trains with ``--train-processes N`` through ``torch.distributed.run``, the other
with ``--ray-address`` and the same ``--train-processes N`` through Ray Train's
``TorchTrainer``.  The same ``pgml.tune`` runs on each, interleaved for ``--rounds``;
the figure is the ``train_samples_per_second`` each records (the Trainer's own,
training loop only), and the wall time of each whole call (process start, Ray's
scheduling and the model's transfer included).

    .venv/bin/python benchmarks/tune_ray.py --processes 2 --rows 2000 --epochs 5 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.pgserver import PostgresCluster, free_port  # noqa: E402
from tests.support.proxyproc import ProxyProcess  # noqa: E402
from tests.support.tiny_models import build_models_dir  # noqa: E402

RAY = Path(sys.executable).parent / "ray"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def ray_daemons_cpu() -> float:
    """CPU seconds Ray's own long-lived processes (GCS, raylet, their agents) have spent:
    what shares the cores with the training workers beyond what torchrun runs."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        daemon = any(
            m in command for m in (b"gcs_server", b"raylet", b"ray/_private", b"ray/dashboard")
        )
        if daemon:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def tune(proxy: ProxyProcess, project: str, epochs: int, batch: int) -> tuple[float, float]:
    """One ``pgml.tune``: the samples per second it records, and its wall time."""
    hyperparams = json.dumps({"num_train_epochs": epochs, "per_device_train_batch_size": batch})
    sql = (
        f"SELECT * FROM pgml.tune('{project}', task => 'text-classification', "
        "relation_name => 'bench_reviews', y_column_name => 'label', "
        f"model_name => 'distilbert-base-uncased', hyperparams => '{hyperparams}', "
        "test_size => 0.2)"
    )
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        began = time.monotonic()
        conn.execute(sql).fetchall()
        wall = time.monotonic() - began
        row = conn.execute(
            "SELECT m.metrics->>'train_samples_per_second' FROM pgml.models m "
            "JOIN pgml.projects p ON p.id = m.project_id WHERE p.name = %s "
            "ORDER BY m.id DESC LIMIT 1",
            [project],
        ).fetchone()
    assert row is not None and row[0] is not None
    return float(row[0]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2, help="training processes")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="per process and step")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pgml-bench-ray-"))
    cluster = PostgresCluster().start()
    ray_port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(
        [
            *(str(RAY), "start", "--head", "--num-cpus", str(args.processes)),
            *("--port", str(ray_port), "--include-dashboard", "false", "--disable-usage-stats"),
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    proxies: list[ProxyProcess] = []
    try:
        cluster.psql(
            "CREATE TABLE bench_reviews AS SELECT 'review ' || g || CASE WHEN g % 2 = 0 "
            "THEN ' great fun to watch' ELSE ' a dull mess' END AS text, g % 2 AS label "
            f"FROM generate_series(1, {args.rows}) g"
        )
        models = build_models_dir(work / "models")
        common = ["--upstream", cluster.dsn(), "--models-dir", str(models), "--device", "cpu"]
        common += ["--train-processes", str(args.processes), "--log-level", "warning"]
        local = ProxyProcess(*common, "--cache-dir", str(work / "local"), env=OFFLINE).start()
        proxies.append(local)
        on_ray = ProxyProcess(
            *common,
            "--cache-dir",
            str(work / "ray"),
            "--ray-address",
            f"127.0.0.1:{ray_port}",
            env=OFFLINE,
        ).start()
        proxies.append(on_ray)
        figures: dict[str, list[tuple[float, float]]] = {"torchrun": [], "ray": []}
        for round_no in range(args.rounds):
            for name, proxy in (("torchrun", local), ("ray", on_ray)):
                daemons = ray_daemons_cpu()
                samples, wall = tune(proxy, f"bench_{name}", args.epochs, args.batch_size)
                figures[name].append((samples, wall))
                print(
                    f"round {round_no + 1} {name:8} {samples:8.1f} samples/s "
                    f"{wall:6.1f} s whole call, Ray's daemons "
                    f"{ray_daemons_cpu() - daemons:5.1f} CPU-s meanwhile",
                    flush=True,
                )
        median = {n: statistics.median(s for s, _ in f) for n, f in figures.items()}
        wall = {n: statistics.median(w for _, w in f) for n, f in figures.items()}
        print()
        print("| processes | rows | torchrun samples/s | Ray samples/s | Ray / torchrun |")
        print("|---|---|---|---|---|")
        print(
            f"| {args.processes} | {args.rows} | {median['torchrun']:.1f} | {median['ray']:.1f} "
            f"| {median['ray'] / median['torchrun']:.3f} |"
        )
        print(
            f"whole call (median): torchrun {wall['torchrun']:.1f} s, Ray {wall['ray']:.1f} s "
            f"({wall['ray'] / wall['torchrun']:.3f})"
        )
    finally:
        for proxy in proxies:
            proxy.stop()
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, env=env)
        cluster.stop()


if __name__ == "__main__":
    main()
