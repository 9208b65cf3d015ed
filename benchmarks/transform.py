"""``pgml.transform`` and ``pgml.transform_stream`` against the bare pipeline, in one run.

1. ``SELECT id, pgml.transform(task, inputs => ARRAY[body]) FROM t`` over N rows of
   distinct texts, against ``transformers.pipeline`` over the same texts in batches of
   ``--batch-size`` (the proxy's batch size too); target ratio >= 0.95.
2. ``transform_stream`` time to first row (a psycopg server-side cursor) against a bare
   ``TextIteratorStreamer``'s first text; target within +5 ms.
3. 32 concurrent clients, each calling single-input ``transform`` in a loop, against one
   client doing the same: calls per second.

Models are the tiny random ones of the tests unless ``--models-dir`` and ``--classifier`` /
``--generator`` name real ones (``--device`` as the proxy's); ``--medium`` classifies with a
random DistilBERT of 11 M parameters instead, so that the model's work is not negligible.

    .venv/bin/python benchmarks/transform.py --rows 10000 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.pgserver import PostgresCluster  # noqa: E402
from tests.support.proxyproc import ProxyProcess  # noqa: E402


def bare_pipeline(task: str, folder: Path, device: str) -> Any:
    import torch
    from transformers import pipeline

    from handlers.device import inference_dtype

    built = pipeline(task, model=str(folder), device=device, dtype=inference_dtype(device))
    if built.tokenizer.pad_token is None:
        built.tokenizer.pad_token = built.tokenizer.eos_token
    torch.set_grad_enabled(False)
    return built


def rows_benchmark(
    proxy: ProxyProcess, cluster: PostgresCluster, classifier: str, bare: Any, args: Any
) -> None:
    cluster.psql(
        "DROP TABLE IF EXISTS t; CREATE TABLE t AS SELECT i AS id, 'review number ' || i || "
        f"' says the film was fine' AS body FROM generate_series(1, {args.rows}) AS i"
    )
    texts = [f"review number {i} says the film was fine" for i in range(1, args.rows + 1)]
    spec = json.dumps({"task": "text-classification", "model": classifier})

    def through_proxy() -> float:
        with psycopg.connect(proxy.dsn()) as conn:
            began = time.monotonic()
            with conn.cursor(name="rows") as cursor:
                cursor.itersize = 10_000
                cursor.execute(
                    "SELECT id, pgml.transform(%s::jsonb, inputs => ARRAY[body]) FROM t", [spec]
                )
                count = sum(1 for _ in cursor)
            assert count == args.rows
            return time.monotonic() - began

    def bare_batches() -> float:
        began = time.monotonic()
        for start in range(0, len(texts), args.batch_size):
            bare(texts[start : start + args.batch_size], batch_size=args.batch_size)
        return time.monotonic() - began

    with psycopg.connect(proxy.dsn()) as conn:  # load the pipelines before measuring
        conn.execute("SELECT pgml.transform(%s::jsonb, inputs => ARRAY['warm up'])", [spec])
    bare(texts[: args.batch_size], batch_size=args.batch_size)
    proxied, bared = [], []
    for _ in range(args.rounds):  # interleaved: the machine's load changes under both alike
        bared.append(bare_batches())
        proxied.append(through_proxy())
    proxy_s, bare_s = statistics.median(proxied), statistics.median(bared)
    print(
        f"transform over {args.rows} rows, batches of {args.batch_size} (median of {args.rounds}):"
    )
    print(f"  proxy {args.rows / proxy_s:9.0f} rows/s ({proxy_s:.2f} s)")
    print(f"  bare  {args.rows / bare_s:9.0f} rows/s ({bare_s:.2f} s)")
    print(f"  ratio proxy / bare: {bare_s / proxy_s:.3f} (target >= 0.95)")


def first_row_benchmark(proxy: ProxyProcess, generator: str, folder: Path, args: Any) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    options = {"max_new_tokens": args.new_tokens, "do_sample": False}
    spec = json.dumps({"task": "text-generation", "model": generator})
    sql = "SELECT * FROM pgml.transform_stream(%s::jsonb, %s::jsonb, 'I love SQL')"
    proxied: list[float] = []
    with psycopg.connect(proxy.dsn()) as conn:
        conn.execute(sql, [spec, json.dumps(options)]).fetchall()  # warm up
        for _ in range(args.rounds):
            began = time.monotonic()
            with conn.cursor(name="stream") as cursor:
                cursor.execute(sql, [spec, json.dumps(options)])
                cursor.fetchone()
                proxied.append(time.monotonic() - began)
                cursor.fetchall()
            conn.commit()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).to(args.device).eval()
    bare: list[float] = []
    for _ in range(args.rounds + 1):
        streamer = TextIteratorStreamer(tokenizer, skip_special_tokens=True)
        began = time.monotonic()
        encoded = tokenizer("I love SQL", return_tensors="pt").to(args.device)
        worker = threading.Thread(
            target=model.generate,
            kwargs={**encoded, **options, "streamer": streamer, "pad_token_id": 0},
        )
        worker.start()
        next(iter(streamer))
        bare.append(time.monotonic() - began)
        for _ in streamer:
            pass
        worker.join()
    bare = bare[1:]
    proxy_ms, bare_ms = statistics.median(proxied) * 1000, statistics.median(bare) * 1000
    print(
        f"transform_stream time to first row, {args.new_tokens} new tokens "
        f"(median of {args.rounds}):"
    )
    print(f"  proxy {proxy_ms:8.1f} ms   bare TextIteratorStreamer {bare_ms:8.1f} ms")
    print(f"  difference: {proxy_ms - bare_ms:+.1f} ms (target within +5 ms)")


def concurrency_benchmark(proxy: ProxyProcess, classifier: str, args: Any) -> None:
    spec = json.dumps({"task": "text-classification", "model": classifier})
    sql = "SELECT pgml.transform(%s::jsonb, inputs => ARRAY[%s])"

    def run(clients: int) -> float:
        done = [0] * clients
        stop = time.monotonic() + args.seconds

        def client(index: int) -> None:
            with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
                n = 0
                while time.monotonic() < stop:
                    conn.execute(sql, [spec, f"client {index} call {n}"]).fetchone()
                    n += 1
                done[index] = n

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(done) / (time.monotonic() - began)

    run(1)  # warm up
    one, many = run(1), run(args.clients)
    print(f"single-input transform, {args.seconds:.0f} s each:")
    print(f"  1 client   {one:8.1f} calls/s")
    print(f"  {args.clients} clients {many:8.1f} calls/s")
    print(f"  ratio {args.clients} clients / 1 client: {many / one:.2f}")


def build_medium_classifier(models: Path) -> str:
    """A random DistilBERT classifier (dim 384, 6 layers) with the tiny model's tokenizer."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    base = models / "distilbert-base-uncased"
    config = DistilBertConfig.from_pretrained(
        base, dim=384, hidden_dim=1536, n_layers=6, n_heads=6, num_labels=2
    )
    folder = models / "medium" / "sentiment"
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return "medium/sentiment"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--classifier", default="tiny/sentiment")
    parser.add_argument("--generator", default="gpt2")
    parser.add_argument("--medium", action="store_true")
    args = parser.parse_args()
    models = args.models_dir
    if models is None:
        from tests.support.tiny_pipelines import build_pipeline_models

        models = build_pipeline_models(Path(tempfile.mkdtemp(prefix="pgml-bench-models-")))
    if args.medium:
        args.classifier = build_medium_classifier(models)
    cluster = PostgresCluster().start()
    proxy = ProxyProcess(
        "--upstream", cluster.dsn(), "--models-dir", str(models), "--device", args.device,
        "--batch-size", str(args.batch_size), "--log-level", "warning",
        env={"HF_HUB_OFFLINE": "1"},
    ).start()  # fmt: skip
    try:
        bare = bare_pipeline("text-classification", models / args.classifier, args.device)
        rows_benchmark(proxy, cluster, args.classifier, bare, args)
        first_row_benchmark(proxy, args.generator, models / args.generator, args)
        concurrency_benchmark(proxy, args.classifier, args)
    finally:
        proxy.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
