"""pgml.load_dataset against psql's \\copy and a row-by-row INSERT loop, in one run.

Writes N rows of review-length text as JSON Lines (the datasets folder) and as CSV, then
times, in interleaved rounds on one private PostgreSQL:
- ``SELECT pgml.load_dataset('reviews')`` through the proxy (COPY in the caller's session);
- ``\\copy`` of the same rows from the CSV file straight into PostgreSQL (the limit);
- single-row INSERTs in one transaction (how PostgresML loads), on a sample of the rows.
It also samples the proxy's RSS during the loads.

    .venv/bin/python benchmarks/load_dataset.py --rows 200000 --rounds 3
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.memory import PeakRss, rss_mb  # noqa: E402
from tests.support.pgserver import BIN, PostgresCluster  # noqa: E402
from tests.support.proxyproc import ProxyProcess  # noqa: E402

WORDS = [
    "the",
    "film",
    "was",
    "a",
    "quiet",
    "and",
    "moving",
    "story",
    "about",
    "family",
    "loss",
    "hope",
    "and",
    "the",
    "small",
    "choices",
    "that",
    "shape",
    "a",
    "life",
    "acting",
    "direction",
    "music",
    "camera",
    "work",
    "all",
    "excellent",
    "though",
    "pacing",
    "dragged",
    "in",
    "the",
    "middle",
    "act",
    "and",
    "the",
    "ending",
    "felt",
    "rushed",
    "compared",
    "with",
    "the",
    "careful",
    "build",
]


def review(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(120, 260))).capitalize() + "."


def psql(dsn: str, command: str) -> float:
    started = time.monotonic()
    subprocess.run(
        [str(BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", dsn, "-c", command],
        check=True,
        capture_output=True,
    )
    return time.monotonic() - started


def insert_loop(dsn: str, rows: list[tuple[str, int]]) -> float:
    started = time.monotonic()
    with psycopg.connect(dsn) as conn:
        conn.execute("TRUNCATE inserted")
        for text, label in rows:
            conn.execute("INSERT INTO inserted (text, label) VALUES (%s, %s)", (text, label))
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--insert-sample", type=int, default=20_000)
    args = parser.parse_args()
    rng = random.Random(7)
    rows = [(review(rng), rng.randint(0, 1)) for _ in range(args.rows)]
    work = Path(tempfile.mkdtemp(prefix="pgml-load-bench-"))
    datasets_dir = work / "datasets"
    datasets_dir.mkdir()
    with (datasets_dir / "reviews.jsonl").open("w") as handle:
        for text, label in rows:
            handle.write(json.dumps({"text": text, "label": label}) + "\n")
    csv_path = work / "reviews.csv"
    with csv_path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    csv_path.chmod(0o644)
    size_mb = (datasets_dir / "reviews.jsonl").stat().st_size / 2**20

    cluster = PostgresCluster().start()
    proxy = ProxyProcess(
        "--upstream",
        cluster.dsn(),
        "--datasets-dir",
        str(datasets_dir),
        "--log-level",
        "warning",
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    ).start()
    assert proxy.process is not None
    cluster.psql(
        "CREATE TABLE copied (text text, label bigint); "
        "CREATE TABLE inserted (text text, label bigint)"
    )
    try:
        psql(proxy.dsn(), "SELECT pgml.load_dataset('reviews', \"limit\" => 10)")  # warm up
        before = rss_mb(proxy.process.pid)
        times: dict[str, list[float]] = {"load_dataset": [], "copy": [], "insert": []}
        with PeakRss(proxy.process.pid) as peak_rss:
            for _ in range(args.rounds):
                times["load_dataset"].append(
                    psql(proxy.dsn(), "SELECT pgml.load_dataset('reviews')")
                )
                times["copy"].append(psql(cluster.dsn(), f"\\copy copied FROM '{csv_path}' CSV"))
                cluster.psql("TRUNCATE copied")
                times["insert"].append(insert_loop(cluster.dsn(), rows[: args.insert_sample]))
        peak = peak_rss.mb
        count = cluster.psql("SELECT count(*) FROM pgml.reviews").strip()
        assert int(count) == args.rows, count
        rate = {
            "load_dataset": args.rows / statistics.median(times["load_dataset"]),
            "copy": args.rows / statistics.median(times["copy"]),
            "insert": args.insert_sample / statistics.median(times["insert"]),
        }
        print(f"rows: {args.rows} ({size_mb:.0f} MB of JSON Lines), rounds: {args.rounds}")
        for name, value in rate.items():
            print(
                f"{name:13} {value:10.0f} rows/s   (runs: "
                + ", ".join(f"{t:.2f}s" for t in times[name])
                + ")"
            )
        print(f"load_dataset / \\copy:  {rate['load_dataset'] / rate['copy']:.3f}")
        print(f"load_dataset / INSERT: {rate['load_dataset'] / rate['insert']:.1f}x")
        print(f"proxy RSS: {before:.0f} MB before the loads, {peak:.0f} MB peak")
    finally:
        proxy.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
