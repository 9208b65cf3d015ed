"""Parameter-efficient, large-table and multi-GPU tuning through ``pgml.tune``, each figure
against its reference measured in the same run.

- ``lora-vs-full``: a LoRA adapter against full tuning of all-MiniLM-L6-v2 on rt_polarity
  (the same rows, split and epochs): F1, train samples/s, and the peak memory of the
  training processes (resident memory; GPU memory from nvidia-smi with CUDA).
- ``lora-vs-plain``: ``pgml.tune`` with LoRA against ``benchmarks/plain_trainer.py
  --lora-config`` (PEFT and ``Trainer`` in a plain script) on the same rows, split, adapter
  and settings: train samples/s (target at least 0.95), interleaved rounds.
- ``big-table``: tuning over a table of ``--big-rows`` rows of generated text against
  ``--small-rows`` rows (a few training steps): the proxy's RSS growth during the call
  (target under 100 MB) and the time to the first training step.
- ``gpu-llama`` (CUDA): a randomly initialised Llama-style model of about 1.1 billion
  parameters built from a config here (no download): full tuning against LoRA and QLoRA
  (``load_in_4bit``): peak GPU memory of the training processes and train samples/s.
- ``gpu-processes`` (several GPUs): LoRA of that model with one training process against
  one per GPU (``--train-processes``): train samples/s.

    .venv/bin/python benchmarks/tune_lora.py lora-vs-full lora-vs-plain big-table
    .venv/bin/python benchmarks/tune_lora.py --quick            # a smoke run of the CPU parts
    .venv/bin/python benchmarks/tune_lora.py gpu-llama gpu-processes --device cuda
    .venv/bin/python benchmarks/tune_lora.py gpu-llama --device cpu --llama tiny  # smoke

On a small CPU machine that other work shares, ``--threads 1`` gives steadier figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.memory import PeakRss, rss_mb  # noqa: E402
from benchmarks.tune_serve import (  # noqa: E402
    DEFAULT_DATA,
    MODEL,
    Row,
    add_size_options,
    copy_rows,
    finish_args,
    read_data,
    thread_env,
)
from tests.support.pgserver import PostgresCluster  # noqa: E402
from tests.support.proxyproc import ProxyProcess  # noqa: E402

CPU_MEASUREMENTS = ("lora-vs-full", "lora-vs-plain", "big-table")
GPU_MEASUREMENTS = ("gpu-llama", "gpu-processes")
MEASUREMENTS = CPU_MEASUREMENTS + GPU_MEASUREMENTS
LORA = {"r": 8, "lora_alpha": 16}
LLAMA_LORA = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}
LLAMA_SIZES: dict[str, dict[str, int]] = {
    # TinyLlama-1.1B's shape: 22 layers of width 2048, grouped-query attention
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}
SIZES: dict[str, tuple[Any, Any, str]] = {
    # option: (full run, --quick, help)
    "rows": (2000, 200, "rt_polarity rows of lora-vs-full and lora-vs-plain"),
    "rounds": (2, 1, "interleaved rounds of lora-vs-plain (median)"),
    "big_rows": (1_000_000, 100_000, "rows of big-table's large table"),
    "small_rows": (10_000, 10_000, "rows of big-table's reference table"),
    "llama_rows": (2000, 200, "rt_polarity texts of gpu-llama and gpu-processes"),
    "llama_steps": (40, 4, "training steps of gpu-llama and gpu-processes"),
}


@dataclass
class Tuned:
    metrics: dict[str, Any]
    wall: float
    notices: list[tuple[float, str]]
    peak_rss_mb: float = 0.0
    """Peak resident memory of the training worker processes, summed over ranks."""
    peak_gpu_mb: float | None = None
    """Peak GPU memory of the training worker processes (nvidia-smi), summed."""

    def seconds_to(self, prefix: str, part: str = "") -> float | None:
        """Seconds from the call to the first NOTICE that starts with ``prefix`` and has
        ``part`` in it."""
        return next(
            (t for t, text in self.notices if text.startswith(prefix) and part in text), None
        )


@dataclass
class Bench:
    args: argparse.Namespace
    cluster: PostgresCluster
    work: Path
    proxies: dict[str, ProxyProcess] = field(default_factory=dict)
    results: list[Row] = field(default_factory=list)

    def report(self, *row: str) -> None:
        self.results.append(Row(*row))

    def proxy(self, *flags: str) -> ProxyProcess:
        """A proxy with ``flags`` (started once per set of flags)."""
        key = " ".join(flags)
        if key not in self.proxies:
            args = self.args
            self.proxies[key] = ProxyProcess(
                "--upstream",
                self.cluster.dsn(),
                "--cache-dir",
                str(self.work / f"cache-{len(self.proxies)}"),
                "--device",
                args.device,
                "--log-level",
                "warning",
                *(["--models-dir", str(args.models_dir)] if args.models_dir else []),
                *flags,
                env={"HF_HUB_OFFLINE": "1", **thread_env(args)},
            ).start()
        return self.proxies[key]


# --- the training processes' memory ---------------------------------------------------------


def descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, ValueError):
                continue
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def is_worker(pid: int) -> bool:
    try:
        return (
            b"handlers.tuning.worker" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:4]
        )
    except OSError:
        return False


def gpu_memory() -> dict[int, float]:
    """MB of GPU memory per process (nvidia-smi); empty without a GPU."""
    if shutil.which("nvidia-smi") is None:
        return {}
    done = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
    )
    found: dict[int, float] = {}
    for line in done.stdout.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            found[int(fields[0])] = float(fields[1])
    return found


class WorkerPeak:
    """Samples the training workers under ``root`` (every 0.2 s): peak RSS and GPU MB."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.rss_mb = 0.0
        self.gpu_mb: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            workers = [p for p in descendants(self.root) if is_worker(p)]
            total = 0.0
            for pid in workers:
                try:
                    total += rss_mb(pid)
                except OSError:
                    continue
            self.rss_mb = max(self.rss_mb, total)
            on_gpu = gpu_memory()
            if on_gpu:
                used = sum(on_gpu.get(pid, 0.0) for pid in workers)
                self.gpu_mb = max(self.gpu_mb or 0.0, used)
            time.sleep(0.2)

    def __enter__(self) -> WorkerPeak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


# --- tuning -------------------------------------------------------------------------------


def tune(
    proxy: ProxyProcess,
    project: str,
    task: str,
    relation: str,
    label: str,
    model: str,
    hyperparams: dict[str, Any],
    test_size: float,
    sampling: str = "random",
) -> Tuned:
    statement = sql.SQL(
        "SELECT * FROM pgml.tune({project}, task => {task}, relation_name => {relation}, "
        "y_column_name => {label}, model_name => {model}, hyperparams => {hyperparams}::jsonb, "
        "test_size => {test_size}, test_sampling => {sampling})"
    ).format(
        project=sql.Literal(project),
        task=sql.Literal(task),
        relation=sql.Literal(relation),
        label=sql.Literal(label),
        model=sql.Literal(model),
        hyperparams=sql.Literal(json.dumps(hyperparams)),
        test_size=sql.Literal(test_size),
        sampling=sql.Literal(sampling),
    )
    notices: list[tuple[float, str]] = []
    print(f"pgml.tune {project} ({json.dumps(hyperparams)}) ...", flush=True)
    assert proxy.process is not None
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as conn,
        WorkerPeak(proxy.process.pid) as peak,
    ):
        started = time.perf_counter()
        conn.add_notice_handler(
            lambda d: notices.append((time.perf_counter() - started, d.message_primary or ""))
        )
        conn.execute(statement).fetchall()
        wall = time.perf_counter() - started
        (metrics,) = conn.execute(
            "SELECT m.metrics FROM pgml.models AS m JOIN pgml.projects AS p "
            "ON p.id = m.project_id WHERE p.name = %s ORDER BY m.id DESC LIMIT 1",
            [project],
        ).fetchone() or (None,)
    tuned = Tuned(metrics, wall, notices, peak.rss_mb, peak.gpu_mb)
    print(
        f"  {wall:.1f} s, {metrics.get('train_samples_per_second', 0):.1f} samples/s, "
        f"workers' peak RSS {tuned.peak_rss_mb:.0f} MB"
        + (f", GPU {tuned.peak_gpu_mb:.0f} MB" if tuned.peak_gpu_mb is not None else ""),
        flush=True,
    )
    return tuned


def classification_hyperparams(args: argparse.Namespace, lora: bool) -> dict[str, Any]:
    found: dict[str, Any] = {
        "num_train_epochs": args.epochs,
        "per_device_train_batch_size": args.train_batch_size,
        "learning_rate": args.lora_learning_rate if lora else args.learning_rate,
    }
    if lora:
        found["lora_config"] = LORA
    return found


def load_rt(bench: Bench, rows: list[dict[str, Any]]) -> None:
    copy_rows(
        bench.cluster.dsn(), "rt", "text text, label int", [(r["text"], r["label"]) for r in rows]
    )


# --- 1. lora-vs-full ----------------------------------------------------------------------


def measure_lora_vs_full(bench: Bench, data: list[dict[str, Any]]) -> None:
    args = bench.args
    rows = data[: args.rows]
    load_rt(bench, rows)
    proxy = bench.proxy()
    full = tune(
        proxy,
        "rt_full",
        "text-classification",
        "rt",
        "label",
        MODEL,
        classification_hyperparams(args, lora=False),
        args.test_size,
    )
    lora = tune(
        proxy,
        "rt_lora",
        "text-classification",
        "rt",
        "label",
        MODEL,
        classification_hyperparams(args, lora=True),
        args.test_size,
    )
    for name, key, fmt in (
        ("F1 (macro) on the test split", "f1", "{:.3f}"),
        ("train samples/s", "train_samples_per_second", "{:.1f}"),
    ):
        a, b = lora.metrics[key], full.metrics[key]
        bench.report(
            "lora-vs-full",
            name,
            fmt.format(a) + " LoRA",
            fmt.format(b) + " full",
            f"{a / b:.3f}",
            "",
        )
    bench.report(
        "lora-vs-full",
        "F1 before tuning (the same untuned model)",
        f"{lora.metrics['before_tuning']['f1']:.3f}",
        f"{full.metrics['before_tuning']['f1']:.3f}",
        "",
        "",
    )
    bench.report(
        "lora-vs-full",
        "peak RSS of the training process, MB",
        f"{lora.peak_rss_mb:.0f} LoRA",
        f"{full.peak_rss_mb:.0f} full",
        f"{lora.peak_rss_mb / full.peak_rss_mb:.3f}",
        "",
    )
    if lora.peak_gpu_mb and full.peak_gpu_mb:
        bench.report(
            "lora-vs-full",
            "peak GPU memory of the training process, MB",
            f"{lora.peak_gpu_mb:.0f} LoRA",
            f"{full.peak_gpu_mb:.0f} full",
            f"{lora.peak_gpu_mb / full.peak_gpu_mb:.3f}",
            "",
        )


# --- 2. lora-vs-plain ---------------------------------------------------------------------


def run_plain(
    bench: Bench, rows: list[dict[str, Any]], hyperparams: dict[str, Any]
) -> dict[str, Any]:
    from handlers.models import ModelResolver

    args = bench.args
    rows_file = bench.work / "plain-rows.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    training = {k: v for k, v in hyperparams.items() if k != "lora_config"}
    command = [
        sys.executable, str(ROOT / "benchmarks" / "plain_trainer.py"),
        "--rows", str(rows_file),
        "--model", str(ModelResolver(models_dir=args.models_dir).resolve(MODEL)),
        "--hyperparams", json.dumps(training),
        "--lora-config", json.dumps(hyperparams["lora_config"]),
        "--test-size", str(args.test_size),
        "--device", args.device,
        "--output-dir", str(bench.work / "plain-output"),
    ]  # fmt: skip
    print(f"plain PEFT + Trainer script on {len(rows)} rows ...", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=os.environ)
    if done.returncode != 0:
        raise RuntimeError(f"plain_trainer.py failed:\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {figures['train_samples_per_second']:.1f} samples/s", flush=True)
    shutil.rmtree(bench.work / "plain-output", ignore_errors=True)
    return figures


def measure_lora_vs_plain(bench: Bench, data: list[dict[str, Any]]) -> None:
    args = bench.args
    rows = data[: args.rows]
    load_rt(bench, rows)
    hyperparams = classification_hyperparams(args, lora=True)
    proxy = bench.proxy()
    ours: list[float] = []
    plain: list[float] = []
    f1: dict[str, float] = {}
    for round_no in range(args.rounds):
        figures = run_plain(bench, rows, hyperparams)
        plain.append(figures["train_samples_per_second"])
        tuned = tune(
            proxy,
            f"rt_lora_{round_no}",
            "text-classification",
            "rt",
            "label",
            MODEL,
            hyperparams,
            args.test_size,
        )
        ours.append(tuned.metrics["train_samples_per_second"])
        f1 = {"proxy": tuned.metrics["f1"], "plain": figures["f1_after"]}
    a, b = statistics.median(ours), statistics.median(plain)
    bench.report(
        "lora-vs-plain",
        f"train samples/s, LoRA (median of {args.rounds})",
        f"{a:.1f}",
        f"{b:.1f}",
        f"{a / b:.3f}",
        ">= 0.95",
    )
    bench.report(
        "lora-vs-plain",
        "F1 after tuning, same split",
        f"{f1['proxy']:.3f}",
        f"{f1['plain']:.3f}",
        "",
        "about equal",
    )


# --- 3. big-table -------------------------------------------------------------------------


def generated_table(bench: Bench, name: str, rows: int) -> None:
    bench.cluster.psql(
        f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} AS SELECT 'review ' || g || ' was ' "
        "|| (ARRAY['great', 'dull', 'fine', 'awful'])[1 + g % 4] || ', ' || md5(g::text) "
        f"AS text, (g % 4 IN (0, 2))::int AS label FROM generate_series(1, {rows}) AS g"
    )


def measure_big_table(bench: Bench) -> None:
    args = bench.args
    proxy = bench.proxy()
    assert proxy.process is not None
    pid = proxy.process.pid
    hyperparams = {
        "max_steps": 5,
        "per_device_train_batch_size": 16,
        "max_length": 32,
        "lora_config": LORA,
        "learning_rate": 1e-3,
    }
    generated_table(bench, "warm", 1000)  # imports and the model's first load, not measured
    tune(proxy, "warm", "text-classification", "warm", "label", MODEL, hyperparams, 100)
    found: dict[int, tuple[Tuned, float, float]] = {}
    for rows in (args.small_rows, args.big_rows):
        table = f"gen_{rows}"
        generated_table(bench, table, rows)
        time.sleep(1.0)
        before = rss_mb(pid)
        with PeakRss(pid) as peak:
            tuned = tune(
                proxy, table, "text-classification", table, "label", MODEL, hyperparams, 100
            )
        found[rows] = (tuned, before, peak.mb)
        print(f"  proxy RSS {before:.0f} -> peak {peak.mb:.0f} MB", flush=True)
    small, big = found[args.small_rows], found[args.big_rows]
    bench.report(
        "big-table",
        f"proxy RSS growth during pgml.tune, MB ({args.big_rows:,} vs {args.small_rows:,} rows)",
        f"{big[2] - big[1]:.0f} ({big[1]:.0f} -> {big[2]:.0f})",
        f"{small[2] - small[1]:.0f} ({small[1]:.0f} -> {small[2]:.0f})",
        f"{(big[2] - big[1]) - (small[2] - small[1]):+.0f} MB",
        "< 100 MB",
    )
    for label, seconds in (
        ("snapshot read, checked and recorded", lambda t: t.seconds_to("training model")),
        ("training loop's first step", lambda t: t.seconds_to("training ", " steps over ")),
    ):
        a, b = seconds(big[0]), seconds(small[0])
        if a is not None and b is not None:
            bench.report(
                "big-table",
                f"seconds until the {label}",
                f"{a:.1f}",
                f"{b:.1f}",
                f"{a / b:.1f}x",
                "",
            )


# --- 4. gpu-llama and 5. gpu-processes ----------------------------------------------------


def build_llama(folder: Path, texts: list[str], size: str, device: str) -> int:
    """A random Llama-style causal LM and a BPE tokenizer trained on ``texts``; returns
    the parameter count."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=32000,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        model_max_length=2048,
    )  # fmt: skip
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **LLAMA_SIZES[size],
    )
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device if device.startswith("cuda") else "cpu"):
        model = LlamaForCausalLM(config).to(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    count = sum(p.numel() for p in model.parameters())
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return count


def llama_hyperparams(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    found: dict[str, Any] = {
        "max_steps": args.llama_steps,
        "per_device_train_batch_size": args.llama_batch_size,
        "max_length": 128,
        "eval_strategy": "no",
        "learning_rate": 1e-4 if kind == "full" else 2e-4,
    }
    if args.device.startswith("cuda"):
        found["bf16"] = True
    if kind != "full":
        found["lora_config"] = LLAMA_LORA
    if kind == "qlora":
        found["load_in_4bit"] = True
    return found


def prepare_llama(bench: Bench, data: list[dict[str, Any]]) -> str:
    args = bench.args
    name = f"bench/llama-{args.llama}"
    models = bench.work / "models"
    if not (models / name / "config.json").is_file():
        print(f"building a random Llama-style model ({args.llama}) ...", flush=True)
        count = build_llama(models / name, [r["text"] for r in data], args.llama, args.device)
        print(f"  {count / 1e9:.2f} billion parameters", flush=True)
    if args.models_dir is None:  # the proxies look in this models folder
        args.models_dir = models
    elif not (args.models_dir / name).exists():
        shutil.copytree(models / name, args.models_dir / name)
    copy_rows(
        bench.cluster.dsn(), "llama_lines", "text text",
        [(r["text"],) for r in data[: args.llama_rows]],
    )  # fmt: skip
    return name


def measure_gpu_llama(bench: Bench, data: list[dict[str, Any]]) -> None:
    import importlib.util

    args = bench.args
    name = prepare_llama(bench, data)
    proxy = bench.proxy()
    kinds = ["full", "lora", "qlora"]
    if not args.device.startswith("cuda") or importlib.util.find_spec("bitsandbytes") is None:
        print("  QLoRA skipped: it needs CUDA and bitsandbytes", flush=True)
        kinds.remove("qlora")
    tuned = {
        kind: tune(proxy, f"llama_{kind}", "text-generation", "llama_lines", "text", name,
                   llama_hyperparams(args, kind), 64)
        for kind in kinds
    }  # fmt: skip
    full = tuned["full"]
    for kind in kinds[1:]:
        found = tuned[kind]
        a = found.metrics["train_samples_per_second"]
        b = full.metrics["train_samples_per_second"]
        bench.report(
            "gpu-llama",
            f"train samples/s, {kind} vs full",
            f"{a:.1f}",
            f"{b:.1f}",
            f"{a / b:.3f}",
            "",
        )
        if found.peak_gpu_mb and full.peak_gpu_mb:
            bench.report(
                "gpu-llama",
                f"peak GPU MB of the training process, {kind} vs full",
                f"{found.peak_gpu_mb:.0f}",
                f"{full.peak_gpu_mb:.0f}",
                f"{found.peak_gpu_mb / full.peak_gpu_mb:.3f}",
                "",
            )
        else:
            bench.report(
                "gpu-llama",
                f"peak RSS MB of the training process, {kind} vs full",
                f"{found.peak_rss_mb:.0f}",
                f"{full.peak_rss_mb:.0f}",
                f"{found.peak_rss_mb / full.peak_rss_mb:.3f}",
                "",
            )


def measure_gpu_processes(bench: Bench, data: list[dict[str, Any]]) -> None:
    import torch

    args = bench.args
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if gpus < 2:
        print(f"gpu-processes skipped: {gpus} GPU(s), it needs several", flush=True)
        return
    name = prepare_llama(bench, data)
    hyperparams = llama_hyperparams(args, "lora")
    one = tune(
        bench.proxy("--train-processes", "1"),
        "llama_one",
        "text-generation",
        "llama_lines",
        "text",
        name,
        hyperparams,
        64,
    )
    many = tune(
        bench.proxy(), "llama_many", "text-generation", "llama_lines", "text", name, hyperparams, 64
    )
    a = many.metrics["train_samples_per_second"]
    b = one.metrics["train_samples_per_second"]
    bench.report(
        "gpu-processes",
        f"train samples/s, LoRA, {gpus} processes vs 1",
        f"{a:.1f}",
        f"{b:.1f}",
        f"{a / b:.2f}x",
        f"~{gpus}x",
    )


# --- main -------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "measurements",
        nargs="*",
        metavar="MEASUREMENT",
        help=f"any of {', '.join(MEASUREMENTS)} (default: the CPU ones)",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="rt_polarity.jsonl")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (proxy and references)")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help=f"the proxy's --models-dir, also where the references find {MODEL}",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the dataset shuffle")
    parser.add_argument("--test-size", type=float, default=0.2)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--learning-rate", type=float, default=5e-5, help="full tuning's")
    parser.add_argument("--lora-learning-rate", type=float, default=2e-3)
    parser.add_argument("--train-batch-size", type=int, default=16)
    parser.add_argument("--llama", choices=sorted(LLAMA_SIZES), default="1b")
    parser.add_argument("--llama-batch-size", type=int, default=8)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of PyTorch everywhere; default: one per core",
    )
    add_size_options(parser, SIZES)
    return finish_args(parser, SIZES, MEASUREMENTS, CPU_MEASUREMENTS)


def main() -> None:
    args = parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.update(thread_env(args))
    data = read_data(args.data, args.seed)
    cluster = PostgresCluster().start()
    work = Path(tempfile.mkdtemp(prefix="pgml-tune-lora-"))
    bench = Bench(args, cluster, work)
    began = time.perf_counter()
    try:
        steps = {
            "lora-vs-full": lambda: measure_lora_vs_full(bench, data),
            "lora-vs-plain": lambda: measure_lora_vs_plain(bench, data),
            "big-table": lambda: measure_big_table(bench),
            "gpu-llama": lambda: measure_gpu_llama(bench, data),
            "gpu-processes": lambda: measure_gpu_processes(bench, data),
        }
        for name in args.measurements:
            print(f"{name} ...", flush=True)
            steps[name]()
        print()
        print(
            f"device {args.device}, threads {args.threads or 'default'}, "
            f"{time.perf_counter() - began:.0f} s in all"
        )
        print()
        print("| measurement | figure | pgml-proxy | reference | ratio | target |")
        print("|---|---|---|---|---|---|")
        for row in bench.results:
            print(
                f"| {row.measurement} | {row.figure} | {row.proxy} | {row.reference} | "
                f"{row.ratio} | {row.target} |"
            )
    finally:
        for proxy in bench.proxies.values():
            proxy.stop()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
