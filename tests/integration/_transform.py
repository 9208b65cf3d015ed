"""Helpers of the ``pgml.transform`` tests: the bare pipelines the results are compared
with, a proxy over the tiny pipeline models, and psql / psycopg runners of JSON results."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import psycopg

from tests.integration._pgml import NULL, SEPARATOR, psql
from tests.support.pgserver import PostgresCluster, free_port
from tests.support.proxyproc import ProxyProcess

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
FLOAT_TOLERANCE = 1e-4
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def model_proxy(cluster: PostgresCluster, models: Path, *extra: str) -> ProxyProcess:
    return ProxyProcess(
        "--upstream",
        cluster.dsn(),
        "--models-dir",
        str(models),
        "--log-level",
        "debug",
        "--dashboard-port",
        str(free_port()),
        *extra,
        env=OFFLINE,
    ).start()


def dashboard_url(proxy: ProxyProcess) -> str:
    port = proxy.args[proxy.args.index("--dashboard-port") + 1]
    return f"http://127.0.0.1:{port}"


def same(got: Any, expected: Any, where: str = "result") -> None:
    """Equal JSON values, floats within FLOAT_TOLERANCE."""
    if isinstance(expected, float) or isinstance(got, float):
        assert isinstance(got, int | float), f"{where}: {got!r} is not a number"
        assert math.isclose(got, expected, abs_tol=FLOAT_TOLERANCE), f"{where}: {got} != {expected}"
    elif isinstance(expected, dict):
        assert isinstance(got, dict), f"{where}: {got!r} is not an object"
        assert sorted(got) == sorted(expected), f"{where}: keys {sorted(got)} != {sorted(expected)}"
        for key in expected:
            same(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert isinstance(got, list | tuple), f"{where}: {got!r} is not a list"
        assert len(got) == len(expected), f"{where}: {len(got)} items != {len(expected)}"
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            same(a, b, f"{where}[{i}]")
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


def as_json(value: Any) -> Any:
    """A pipeline's output as the JSON it becomes (numpy numbers as floats)."""
    return json.loads(json.dumps(value, default=lambda v: v.item()))


def psql_rows(dsn: str, sql: str) -> list[list[str | None]]:
    """The rows of one statement through psql, each cell as psql printed it."""
    out = psql(dsn, sql)
    assert out.returncode == 0 and "ERROR" not in out.stderr, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1].startswith("("), out.stdout
    return [[None if c == NULL else c for c in line.split(SEPARATOR)] for line in lines[1:-1]]


def binary(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Rows of one statement through the extended protocol with binary results."""
    with conn.cursor(binary=True) as cur:
        cur.execute(sql, params)
        return cur.fetchall()


# --- references ---------------------------------------------------------------------------


class Bare:
    """The bare transformers pipelines and models the proxy's results must equal."""

    def __init__(self, models: Path) -> None:
        self.models = models
        self._cache: dict[tuple[str, str], Any] = {}

    def path(self, model: str) -> str:
        if model == MINILM:
            from handlers.models import ModelResolver

            return str(ModelResolver().resolve(model))
        return str(self.models / model)

    def pipeline(self, task: str, model: str) -> Any:
        key = (task, model)
        if key not in self._cache:
            import torch
            from transformers import pipeline

            built = pipeline(task, model=self.path(model), device="cpu", dtype=torch.float32)
            if built.tokenizer.pad_token is None:
                built.tokenizer.pad_token = built.tokenizer.eos_token
            if task == "text-generation":
                built.tokenizer.padding_side = "left"
            self._cache[key] = built
        return self._cache[key]

    def run(self, task: str, model: str, inputs: Any, **args: Any) -> Any:
        return as_json(self.pipeline(task, model)(inputs, **args))

    def seq2seq(self, model: str, texts: list[str], key: str, **generate: Any) -> list[Any]:
        """What transformers 4's translation / summarization pipelines gave: each text
        generated on its own, decoded without special tokens."""
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.path(model))
        loaded = AutoModelForSeq2SeqLM.from_pretrained(self.path(model)).eval()
        out = []
        for text in texts:
            ids = loaded.generate(**tokenizer(text, return_tensors="pt"), **generate)
            out.append({key: tokenizer.decode(ids[0], skip_special_tokens=True)})
        return out

    def answer(self, model: str, question: str, context: str, max_answer_len: int = 15) -> Any:
        """Extractive QA by brute force: the context span whose start and end
        probabilities (softmax over the context tokens) multiply to the most."""
        import torch
        from transformers import AutoModelForQuestionAnswering, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.path(model))
        loaded = AutoModelForQuestionAnswering.from_pretrained(self.path(model)).eval()
        encoded = tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt")
        offsets = encoded.pop("offset_mapping")[0].tolist()
        in_context = [s == 1 for s in encoded.sequence_ids(0)]
        with torch.no_grad():
            output = loaded(**encoded)
        masked = torch.tensor([not c for c in in_context])
        start = torch.softmax(output.start_logits[0].masked_fill(masked, -10000.0), -1)
        end = torch.softmax(output.end_logits[0].masked_fill(masked, -10000.0), -1)
        best = (-1.0, 0, 0)
        for s in range(len(in_context)):
            for e in range(s, min(s + max_answer_len, len(in_context))):
                if in_context[s] and in_context[e] and float(start[s] * end[e]) > best[0]:
                    best = (float(start[s] * end[e]), s, e)
        score, s, e = best
        a, b = offsets[s][0], offsets[e][1]
        while a > 0 and context[a - 1].isalnum() and context[a].isalnum():
            a -= 1
        while 0 < b < len(context) and context[b - 1].isalnum() and context[b].isalnum():
            b += 1
        return {"score": score, "start": a, "end": b, "answer": context[a:b]}

    def rank(self, model: str, query: str, documents: list[str], **kwargs: Any) -> list[Any]:
        from sentence_transformers import CrossEncoder

        key = ("rank", model)
        if key not in self._cache:
            self._cache[key] = CrossEncoder(self.path(model), device="cpu")
        ranked = self._cache[key].rank(query, documents, **kwargs)
        return [(int(r["corpus_id"]), float(r["score"]), r.get("text")) for r in ranked]
