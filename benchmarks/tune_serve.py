"""Tuning and serving a text classifier through the proxy, each against its reference.

Starts a private PostgreSQL and the proxy, loads rt_polarity (shuffled with a fixed seed)
and measures, in one run, each figure next to the reference it is compared with:

- ``quality``: F1 on the test split after ``pgml.tune`` against the untuned model's F1
  (both recorded by the same tune);
- ``train-speed``: ``pgml.tune``'s recorded ``train_samples_per_second`` against
  ``benchmarks/plain_trainer.py`` (Hugging Face ``Trainer`` in a fresh process, same rows,
  model, hyperparameters and split); also the wall time of the whole ``pgml.tune`` call
  against the plain script's, model load included;
- ``serve-batch``: ``SELECT id, pgml.predict('rt', text) FROM t`` over N distinct texts
  against the same saved model loaded here with ``handlers.predictor.Predictor``,
  predicting the same texts in batches of the proxy's ``--batch-size``;
- ``serve-latency``: a prepared single-row ``SELECT pgml.predict('rt', $1)`` round trip
  against the bare model's single-text call (medians and p90 of interleaved calls);
- ``serve-concurrency``: single-row predicts per second from 32 clients, one connection
  each, against one client doing the same;
- ``memory``: a fresh proxy's RSS after 1 connection called predict once against after
  50 connections each did, next to the size of the model's weights.

The serving measurements reuse one tuned project (``rt``): the one ``quality`` and
``train-speed`` tune, or else a short tune on ``--serve-tune-rows`` rows.

    .venv/bin/python benchmarks/tune_serve.py                  # everything, full sizes
    .venv/bin/python benchmarks/tune_serve.py --quick          # a smoke run of everything
    .venv/bin/python benchmarks/tune_serve.py serve-latency memory --device cuda

On a small CPU machine that other work shares, ``--threads 1`` gives steadier figures:
PyTorch's default of one thread per core stalls whenever another process holds a core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.memory import PeakRss, rss_mb  # noqa: E402
from tests.support.pgserver import PostgresCluster  # noqa: E402
from tests.support.proxyproc import ProxyProcess  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PROJECT = "rt"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "sentiment" / "rt_polarity.jsonl"
MEASUREMENTS = (
    "quality",
    "train-speed",
    "serve-batch",
    "serve-latency",
    "serve-concurrency",
    "memory",
)
TUNING = frozenset({"quality", "train-speed"})
SIZES: dict[str, tuple[Any, Any, str]] = {
    # option: (full run, --quick, help)
    "rows": (2000, 200, "rows of the dataset that quality and train-speed tune on"),
    "serve_tune_rows": (300, 100, "rows of the short tune when only serving is measured"),
    "predict_rows": (10_000, 500, "distinct texts that serve-batch predicts"),
    "train_rounds": (3, 1, "interleaved plain scripts and tunes of train-speed (median)"),
    "rounds": (3, 1, "interleaved rounds of serve-batch and serve-concurrency (median)"),
    "iterations": (500, 60, "single-row calls of serve-latency, each path"),
    "seconds": (10.0, 3.0, "length of each serve-concurrency run"),
    "clients": (32, 32, "concurrent clients of serve-concurrency"),
    "connections": (50, 50, "connections of memory"),
}


@dataclass
class Row:
    """One line of the results table."""

    measurement: str
    figure: str
    proxy: str
    reference: str
    ratio: str
    target: str


@dataclass
class TuneRun:
    model_id: int
    metrics: dict[str, Any]
    wall_seconds: float


@dataclass
class Bench:
    args: argparse.Namespace
    cluster: PostgresCluster
    proxy: ProxyProcess
    cache_dir: Path
    work: Path
    data: list[dict[str, Any]]
    hyperparams: dict[str, Any]
    results: list[Row] = field(default_factory=list)
    tuned: list[TuneRun] = field(default_factory=list)
    tuned_rows: list[dict[str, Any]] = field(default_factory=list)
    _predictor: Any = None

    def report(self, *row: str) -> None:
        self.results.append(Row(*row))

    @property
    def proxy_pid(self) -> int:
        assert self.proxy.process is not None
        return self.proxy.process.pid

    def predictor(self) -> Any:
        """The deployed model of ``rt``, loaded here from the folder the proxy serves."""
        if self._predictor is None:
            from handlers.artifact import Manifest
            from handlers.device import pick_device
            from handlers.predictor import Predictor

            folder = self.model_folder()
            device = pick_device(self.args.device)
            self._predictor = Predictor.load(folder, Manifest.read(folder), device)
        return self._predictor

    def model_folder(self, model_id: int | None = None) -> Path:
        model_id = model_id if model_id is not None else deployed_model(self.proxy.dsn())
        found = [
            p.parent
            for p in (self.cache_dir / "models").glob("*/*/pgml.json")
            if p.parent.name.startswith(f"{model_id}-")
        ]
        if not found:
            raise RuntimeError(f"no local copy of model {model_id} under {self.cache_dir}")
        return found[0]


# --- data and tuning -------------------------------------------------------------------


def read_data(path: Path, seed: int) -> list[dict[str, Any]]:
    if not path.is_file():
        sys.exit(
            f"dataset not found: {path}\n"
            "Pass --data with the path of rt_polarity.jsonl (JSON Lines: text, label); "
            "by default it is read from ../shared/data/sentiment/ next to the repository."
        )
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)  # the file is sorted by label
    return rows


def copy_rows(dsn: str, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        conn.execute(
            sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(table), sql.SQL(columns))
        )
        with (
            conn.cursor() as cursor,
            cursor.copy(sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(table))) as copy,
        ):
            for row in rows:
                copy.write_row(row)


def tune(bench: Bench, rows: list[dict[str, Any]]) -> TuneRun:
    """``pgml.tune`` of project ``rt`` on ``rows``, timed from the client."""
    args = bench.args
    copy_rows(
        bench.cluster.dsn(), "rt", "text text, label int", [(r["text"], r["label"]) for r in rows]
    )
    statement = sql.SQL(
        "SELECT * FROM pgml.tune({project}, task => 'text-classification', "
        "relation_name => 'rt', y_column_name => 'label', model_name => {model}, "
        "hyperparams => {hyperparams}::jsonb, test_size => {test_size}, "
        "test_sampling => 'random')"
    ).format(
        project=sql.Literal(PROJECT),
        model=sql.Literal(MODEL),
        hyperparams=sql.Literal(json.dumps(bench.hyperparams)),
        test_size=sql.Literal(args.test_size),
    )
    print(f"pgml.tune on {len(rows)} rows ...", flush=True)
    with psycopg.connect(bench.proxy.dsn(), autocommit=True) as conn:
        if args.verbose:
            conn.add_notice_handler(lambda d: print(f"  NOTICE: {d.message_primary}", flush=True))
        started = time.perf_counter()
        conn.execute(statement).fetchall()
        wall = time.perf_counter() - started
        model_id, metrics = conn.execute(
            "SELECT m.id, m.metrics FROM pgml.models AS m JOIN pgml.projects AS p "
            "ON p.id = m.project_id WHERE p.name = %s ORDER BY m.id DESC LIMIT 1",
            [PROJECT],
        ).fetchone()  # type: ignore[misc]
    print(
        f"  model {model_id}: {wall:.1f} s, f1 {metrics['before_tuning']['f1']:.3f} -> "
        f"{metrics['f1']:.3f}, {metrics['train_samples_per_second']:.1f} samples/s",
        flush=True,
    )
    run = TuneRun(int(model_id), metrics, wall)
    bench.tuned.append(run)
    bench.tuned_rows = rows
    return run


def deployed_model(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT id FROM pgml.deployed_models WHERE name = %s", [PROJECT]
        ).fetchone()
    if row is None:
        raise RuntimeError(f"project {PROJECT} has no deployed model")
    return int(row[0])


def ensure_served(bench: Bench) -> None:
    """A tuned and deployed ``rt`` for the serving measurements, tuned once."""
    if not bench.tuned:
        tune(bench, bench.data[: bench.args.serve_tune_rows])


# --- 1. quality and 2. train-speed -------------------------------------------------------


def measure_tuning(bench: Bench, selected: list[str]) -> None:
    args = bench.args
    rows = bench.data[: args.rows]
    plain: list[tuple[dict[str, Any], float]] = []
    for round_no in range(args.train_rounds):
        if "train-speed" in selected:
            plain.append(run_plain_trainer(bench, rows))
        if round_no == 0 or "train-speed" in selected:
            tune(bench, rows)
    first = bench.tuned[0].metrics
    if "quality" in selected:
        before, after = first["before_tuning"], first
        bench.report(
            "quality",
            f"F1 (macro) on {round(len(rows) * args.test_size)} test rows",
            f"{after['f1']:.3f} tuned",
            f"{before['f1']:.3f} untuned",
            f"{after['f1'] / before['f1']:.2f}x (+{after['f1'] - before['f1']:.3f})",
            "tuned > untuned",
        )
        bench.report(
            "quality",
            "accuracy",
            f"{after['accuracy']:.3f} tuned",
            f"{before['accuracy']:.3f} untuned",
            f"{after['accuracy'] / before['accuracy']:.2f}x",
            "",
        )
    if "train-speed" in selected:
        proxy_sps = statistics.median(t.metrics["train_samples_per_second"] for t in bench.tuned)
        plain_sps = statistics.median(p["train_samples_per_second"] for p, _ in plain)
        proxy_wall = statistics.median(t.wall_seconds for t in bench.tuned)
        plain_wall = statistics.median(w for _, w in plain)
        bench.report(
            "train-speed",
            "train samples/s",
            f"{proxy_sps:.1f}",
            f"{plain_sps:.1f}",
            f"{proxy_sps / plain_sps:.3f}",
            ">= 0.95",
        )
        bench.report(
            "train-speed",
            "wall s: the whole pgml.tune call vs the whole script",
            f"{proxy_wall:.1f}",
            f"{plain_wall:.1f}",
            f"{plain_wall / proxy_wall:.3f}",
            "",
        )
        bench.report(
            "train-speed",
            "F1 after tuning (same split?)",
            f"{statistics.median(t.metrics['f1'] for t in bench.tuned):.3f}",
            f"{statistics.median(p['f1_after'] for p, _ in plain):.3f}",
            "",
            "about equal",
        )


def run_plain_trainer(bench: Bench, rows: list[dict[str, Any]]) -> tuple[dict[str, Any], float]:
    """``plain_trainer.py`` in a fresh process on ``rows``; its figures and wall time."""
    from handlers.models import ModelResolver
    from handlers.tuning.split import split_rows

    args = bench.args
    rows_file = bench.work / "plain-rows.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "plain_trainer.py"),
        "--rows",
        str(rows_file),
        "--model",
        str(ModelResolver(models_dir=args.models_dir).resolve(MODEL)),
        "--hyperparams",
        json.dumps(bench.hyperparams),
        "--test-size",
        str(args.test_size),
        "--seed",
        str(args.tune_seed),
        "--device",
        args.device,
        "--output-dir",
        str(bench.work / "plain-output"),
    ]
    print(f"plain Trainer script on {len(rows)} rows ...", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"plain_trainer.py failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    # The proxy's split of the same rows, as it reads them (text and label as text).
    train, test = split_rows(len(rows), args.test_size, "random", args.tune_seed)
    from benchmarks.plain_trainer import digest

    expected = digest([{"text": rows[i]["text"], "label": str(rows[i]["label"])} for i in test])
    if figures["test_digest"] != expected or figures["train_rows"] != len(train):
        raise RuntimeError("plain_trainer.py drew another split than pgml.tune")
    print(
        f"  {wall:.1f} s, f1 {figures['f1_before']:.3f} -> {figures['f1_after']:.3f}, "
        f"{figures['train_samples_per_second']:.1f} samples/s",
        flush=True,
    )
    shutil.rmtree(bench.work / "plain-output", ignore_errors=True)
    return figures, wall


# --- 3. serve-batch ---------------------------------------------------------------------


def distinct_texts(data: list[dict[str, Any]], count: int) -> list[str]:
    texts = list(dict.fromkeys(r["text"] for r in data))
    copy = 2
    while len(texts) < count:  # more than the dataset has: numbered variants
        texts += [f"{t} ({copy})" for t in texts[: count - len(texts)]]
        copy += 1
    return texts[:count]


def measure_serve_batch(bench: Bench) -> None:
    args = bench.args
    texts = distinct_texts(bench.data, args.predict_rows)
    copy_rows(bench.cluster.dsn(), "t", "id int, text text", list(enumerate(texts)))
    predictor = bench.predictor()
    predictor.predict(texts[: args.batch_size])  # warm up both
    with psycopg.connect(bench.proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pgml.predict(%s, 'warm up')", [PROJECT]).fetchone()
    times: dict[str, list[float]] = {"proxy": [], "bare": []}
    agreement = 1.0
    for round_no in range(args.rounds):
        started = time.perf_counter()
        bare: list[Any] = []
        for start in range(0, len(texts), args.batch_size):
            bare += predictor.predict(texts[start : start + args.batch_size])
        times["bare"].append(time.perf_counter() - started)
        with psycopg.connect(bench.proxy.dsn(), autocommit=True) as conn:
            started = time.perf_counter()
            served = conn.execute(f"SELECT id, pgml.predict('{PROJECT}', text) FROM t").fetchall()
            times["proxy"].append(time.perf_counter() - started)
        assert len(served) == len(texts), (len(served), len(texts))
        same = sum(1 for i, label in served if float(label) == float(bare[i]))
        agreement = min(agreement, same / len(texts))
        print(
            f"  round {round_no + 1}: proxy {times['proxy'][-1]:.2f} s, "
            f"bare {times['bare'][-1]:.2f} s",
            flush=True,
        )
    proxy_rate = len(texts) / statistics.median(times["proxy"])
    bare_rate = len(texts) / statistics.median(times["bare"])
    bench.report(
        "serve-batch",
        f"rows/s, {len(texts)} distinct texts, batch {args.batch_size}",
        f"{proxy_rate:.0f}",
        f"{bare_rate:.0f}",
        f"{proxy_rate / bare_rate:.3f}",
        ">= 0.95",
    )
    bench.report(
        "serve-batch", "labels equal to the bare model's", f"{agreement:.2%}", "", "", "100%"
    )


# --- 4. serve-latency -------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure_serve_latency(bench: Bench) -> None:
    args = bench.args
    texts = distinct_texts(bench.data, max(args.iterations, 1))
    predictor = bench.predictor()
    timings: dict[str, list[float]] = {"proxy": [], "bare": [], "relay": []}
    predict_sql = f"SELECT pgml.predict('{PROJECT}', %s)"
    with psycopg.connect(bench.proxy.dsn(), autocommit=True) as conn:
        for text in texts[:20]:  # warm up: prepares both statements, loads the model
            conn.execute(predict_sql, [text], prepare=True).fetchone()
            conn.execute("SELECT %s::text", [text], prepare=True).fetchone()
            predictor.predict([text])
        for text in texts[: args.iterations]:
            started = time.perf_counter()
            predictor.predict([text])
            timings["bare"].append(time.perf_counter() - started)
            started = time.perf_counter()
            conn.execute(predict_sql, [text], prepare=True).fetchone()
            timings["proxy"].append(time.perf_counter() - started)
            started = time.perf_counter()
            conn.execute("SELECT %s::text", [text], prepare=True).fetchone()
            timings["relay"].append(time.perf_counter() - started)
    ms = {k: [v * 1000 for v in values] for k, values in timings.items()}
    for label, q in (("median", 0.5), ("p90", 0.9)):
        proxy, bare = quantile(ms["proxy"], q), quantile(ms["bare"], q)
        bench.report(
            "serve-latency",
            f"ms at the {label} of {args.iterations} calls (ratio: proxy - bare)",
            f"{proxy:.2f}",
            f"{bare:.2f}",
            f"{proxy - bare:+.2f} ms",
            "<= +1 ms" if label == "median" else "",
        )
    bench.report(
        "serve-latency",
        "ms at the median of a prepared SELECT $1::text through the proxy (the hop alone)",
        f"{quantile(ms['relay'], 0.5):.2f}",
        "",
        "",
        "",
    )


# --- 5. serve-concurrency ---------------------------------------------------------------


async def _clients(dsn: str, count: int, seconds: float, texts: list[str]) -> int:
    """Single-row predicts done by ``count`` clients in ``seconds``."""
    predict_sql = f"SELECT pgml.predict('{PROJECT}', %s)"
    connections = [
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(count)
    ]
    try:
        for n, conn in enumerate(connections):  # prepare, outside the measured time
            await (await conn.execute(predict_sql, [texts[n]], prepare=True)).fetchone()
        deadline = 0.0

        async def client(n: int, conn: psycopg.AsyncConnection[Any]) -> int:
            done = 0
            while time.perf_counter() < deadline:
                text = texts[(n * 7919 + done) % len(texts)]
                await (await conn.execute(predict_sql, [text], prepare=True)).fetchone()
                done += 1
            return done

        deadline = time.perf_counter() + seconds
        return sum(await asyncio.gather(*(client(n, c) for n, c in enumerate(connections))))
    finally:
        for conn in connections:
            await conn.close()


def measure_serve_concurrency(bench: Bench) -> None:
    args = bench.args
    texts = distinct_texts(bench.data, 2000)
    counts: dict[int, list[float]] = {1: [], args.clients: []}
    for _ in range(args.rounds):
        for count in counts:
            calls = asyncio.run(_clients(bench.proxy.dsn(), count, args.seconds, texts))
            counts[count].append(calls / args.seconds)
            print(f"  {count:3} clients: {calls / args.seconds:8.1f} calls/s", flush=True)
    one = statistics.median(counts[1])
    many = statistics.median(counts[args.clients])
    predictor = bench.predictor()
    started = time.perf_counter()
    batches = 0
    while time.perf_counter() - started < max(1.0, args.seconds / 2) or batches < 3:
        start = batches * args.clients % (len(texts) - args.clients)
        predictor.predict(texts[start : start + args.clients])
        batches += 1
    bare = batches * args.clients / (time.perf_counter() - started)
    bench.report(
        "serve-concurrency",
        f"single-row predicts/s, {args.clients} clients vs 1, {args.seconds:g} s each",
        f"{many:.0f}",
        f"{one:.0f}",
        f"{many / one:.1f}x",
        ">= 4x",
    )
    bench.report(
        "serve-concurrency",
        f"texts/s of the bare model in batches of {args.clients} (the ceiling)",
        "",
        f"{bare:.0f}",
        f"{many / bare:.3f}",
        "",
    )


# --- 6. memory --------------------------------------------------------------------------


def measure_memory(bench: Bench) -> None:
    """A fresh proxy (same database and model cache): 1 connection, then 50."""
    args = bench.args
    folder = bench.model_folder()
    weights = (
        sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
        / 2**20
    )
    proxy = start_proxy(bench.cluster, bench.cache_dir, args)
    assert proxy.process is not None
    pid = proxy.process.pid
    predict_sql = f"SELECT pgml.predict('{PROJECT}', %s)"
    connections: list[psycopg.Connection[Any]] = []
    try:
        connections.append(psycopg.connect(proxy.dsn(), autocommit=True))
        idle = settled_rss(pid)
        with PeakRss(pid) as peak:
            connections[0].execute(predict_sql, ["a first prediction"]).fetchone()
            one = settled_rss(pid)
            gpu_one = gpu_mb(pid)
            while len(connections) < args.connections:
                connections.append(psycopg.connect(proxy.dsn(), autocommit=True))
            for n, conn in enumerate(connections):
                conn.execute(predict_sql, [f"prediction number {n}"]).fetchone()
            many = settled_rss(pid)
            gpu_many = gpu_mb(pid)
        print(
            f"  fresh proxy: {idle:.0f} MB idle, {one:.0f} MB after 1 predict, "
            f"{many:.0f} MB with {len(connections)} connections (peak {peak.mb:.0f} MB)",
            flush=True,
        )
    finally:
        for conn in connections:
            conn.close()
        proxy.stop()
    growth = many - one
    bench.report(
        "memory",
        f"proxy RSS MB after 1 connection -> after {args.connections} (ratio: growth / weights)",
        f"{one:.0f} -> {many:.0f} (+{growth:.0f})",
        f"weights {weights:.0f}",
        f"{growth / weights:.2f}",
        "< 1 (model held once)",
    )
    bench.report(
        "memory",
        "proxy RSS MB idle -> after its first predict (PyTorch and the model)",
        f"{idle:.0f} -> {one:.0f} (+{one - idle:.0f})",
        f"weights {weights:.0f}",
        f"{(one - idle) / weights:.2f}",
        "",
    )
    if gpu_one is not None and gpu_many is not None:
        bench.report(
            "memory",
            f"proxy GPU MB after 1 connection -> after {args.connections} (nvidia-smi)",
            f"{gpu_one:.0f} -> {gpu_many:.0f} (+{gpu_many - gpu_one:.0f})",
            f"weights {weights:.0f}",
            f"{(gpu_many - gpu_one) / weights:.2f}",
            "< 1 (model held once)",
        )


def settled_rss(pid: int) -> float:
    time.sleep(1.0)
    return rss_mb(pid)


def gpu_mb(pid: int) -> float | None:
    """GPU memory nvidia-smi reports for ``pid``; None without a GPU or that process."""
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
    )
    for line in done.stdout.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid) and fields[1].isdigit():
            return float(fields[1])
    return None


# --- main -------------------------------------------------------------------------------


def start_proxy(
    cluster: PostgresCluster, cache_dir: Path, args: argparse.Namespace
) -> ProxyProcess:
    return ProxyProcess(
        "--upstream",
        cluster.dsn(),
        "--cache-dir",
        str(cache_dir),
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device,
        "--log-level",
        "warning",
        *(["--models-dir", str(args.models_dir)] if args.models_dir else []),
        env={"HF_HUB_OFFLINE": "1", **thread_env(args)},
    ).start()


def thread_env(args: argparse.Namespace) -> dict[str, str]:
    """``--threads``: the same CPU thread count for the proxy, its training worker and
    the references (unset: each library's default, one thread per core)."""
    if args.threads is None:
        return {}
    return {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}


def print_table(bench: Bench) -> None:
    print()
    print("ratio: pgml-proxy / reference as speeds (higher is better) unless the figure says")
    print()
    print("| measurement | figure | pgml-proxy | reference | ratio | target |")
    print("|---|---|---|---|---|---|")
    for row in bench.results:
        print(
            f"| {row.measurement} | {row.figure} | {row.proxy} | {row.reference} | "
            f"{row.ratio} | {row.target} |"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "measurements",
        nargs="*",
        metavar="MEASUREMENT",
        help=f"any of {', '.join(MEASUREMENTS)} (default: all)",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="rt_polarity.jsonl")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (proxy and refs)")
    parser.add_argument("--batch-size", type=int, default=256, help="the proxy's --batch-size")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help=f"the proxy's --models-dir, also where the references look for {MODEL}",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the dataset shuffle")
    parser.add_argument("--tune-seed", type=int, default=42, help="pgml.tune's split seed")
    parser.add_argument("--test-size", type=float, default=0.2)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--train-batch-size", type=int, default=16)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of PyTorch everywhere (proxy, worker, references); default: cores",
    )
    parser.add_argument("--verbose", action="store_true", help="print pgml.tune's NOTICEs")
    add_size_options(parser, SIZES)
    return finish_args(parser, SIZES, MEASUREMENTS, MEASUREMENTS)


Sizes = dict[str, tuple[Any, Any, str]]
"""Option name: (full run, ``--quick``, help)."""


def add_size_options(parser: argparse.ArgumentParser, sizes: Sizes) -> None:
    """An option per size, defaulting to its full or ``--quick`` value."""
    for name, (full, quick, text) in sizes.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=type(full),
            default=None,
            help=f"{text} (default {full}, --quick {quick})",
        )


def finish_args(
    parser: argparse.ArgumentParser,
    sizes: Sizes,
    known: Sequence[str],
    default: Sequence[str],
) -> argparse.Namespace:
    """The parsed arguments: measurements checked (``default`` when none is named),
    sizes filled in from ``--quick``."""
    args = parser.parse_args()
    unknown = [m for m in args.measurements if m not in known]
    if unknown:
        parser.error(f"unknown measurement {unknown[0]!r}: choose from {', '.join(known)}")
    for name, (full, quick, _) in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.measurements = list(dict.fromkeys(args.measurements)) or list(default)
    return args


def main() -> None:
    args = parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.update(thread_env(args))  # before PyTorch is imported here
    data = read_data(args.data, args.seed)
    hyperparams = {
        "num_train_epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "per_device_train_batch_size": args.train_batch_size,
    }
    cluster = PostgresCluster().start()
    work = Path(tempfile.mkdtemp(prefix="pgml-tune-serve-"))
    cache_dir = work / "cache"
    proxy = start_proxy(cluster, cache_dir, args)
    bench = Bench(args, cluster, proxy, cache_dir, work, data, hyperparams)
    began = time.perf_counter()
    try:
        tuning = [m for m in args.measurements if m in TUNING]
        if tuning:
            measure_tuning(bench, tuning)
        steps = {
            "serve-batch": measure_serve_batch,
            "serve-latency": measure_serve_latency,
            "serve-concurrency": measure_serve_concurrency,
            "memory": measure_memory,
        }
        for name, step in steps.items():
            if name in args.measurements:
                ensure_served(bench)
                print(f"{name} ...", flush=True)
                step(bench)
        print()
        device = bench.args.device
        if bench._predictor is not None:
            device = bench._predictor.device
        print(
            f"device {device}, threads {args.threads or 'default'}, "
            f"proxy --batch-size {args.batch_size}, project {PROJECT} "
            f"tuned on {len(bench.tuned_rows)} rows, {time.perf_counter() - began:.0f} s in all"
        )
        print_table(bench)
    finally:
        proxy.stop()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
