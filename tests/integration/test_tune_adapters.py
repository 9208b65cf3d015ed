"""Parameter-efficient tuning through pgml.tune: LoRA adapters on a tiny GPT-2
(text-generation) and a tiny Marian (translation) from the test's models folder.

The loss falls; what pgml.files stores is the adapter, a small fraction of the fully tuned
model's files; a proxy with an empty cache restores the adapter, loads its base model by
name and serves the same text; two projects on one base model are served at once with the
base's weights held once; a merged adapter is stored as a whole model.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import dropped_afterwards, tuning_proxy
from tests.support.pgserver import PostgresCluster, free_port
from tests.support.proxyproc import ProxyProcess
from tests.support.tiny_models import ENGLISH, SPANISH

GPT2 = "gpt2"
MARIAN = "Helsinki-NLP/opus-mt-en-es"
PROMPT = "The weather is"
PROMPTS = [PROMPT, "Me gusta", "The library", "El tren sale", "Good morning"]
SOURCE = "I love databases and I love queries."
GENERATE = json.dumps({"max_new_tokens": 8})
LORA_TRAINING = {
    "num_train_epochs": 8,
    "learning_rate": 0.03,
    "per_device_train_batch_size": 8,
    "eval_strategy": "no",  # evaluated before and after only
}
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "pgml.json"}
ROWS = 64


@pytest.fixture(scope="module")
def tables(cluster: PostgresCluster) -> Iterator[Callable[[str], str]]:
    yield from dropped_afterwards(cluster)


@pytest.fixture(scope="module")
def direct(cluster: PostgresCluster) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def lines(direct: psycopg.Connection[Any], tables: Callable[[str], str]) -> str:
    table = tables("lines")
    direct.execute(f"CREATE TABLE {table} (text text)")
    with direct.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} VALUES (%s)", [(s,) for s in ENGLISH[:ROWS]])
    return table


@pytest.fixture(scope="module")
def pairs(direct: psycopg.Connection[Any], tables: Callable[[str], str]) -> str:
    table = tables("pairs")
    direct.execute(f"CREATE TABLE {table} (en text, es text)")
    with direct.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {table} VALUES (%s, %s)", list(zip(ENGLISH, SPANISH, strict=True))[:ROWS]
        )
    return table


def tune(
    proxy: ProxyProcess,
    project: str,
    task: str,
    relation: str,
    label: str,
    model: str,
    hyperparams: dict[str, Any],
) -> tuple[tuple[Any, ...], list[str]]:
    """pgml.tune through psycopg; its row and the NOTICEs it sent."""
    notices: list[str] = []
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.add_notice_handler(lambda n: notices.append(n.message_primary or ""))
        row = conn.execute(
            "SELECT * FROM pgml.tune(%s, task => %s, relation_name => %s, y_column_name => %s, "
            "model_name => %s, hyperparams => %s::jsonb, test_size => 0.25)",
            (project, task, relation, label, model, json.dumps(hyperparams)),
        ).fetchone()
    assert row is not None
    return tuple(row), notices


def model_of(direct: psycopg.Connection[Any], project: str) -> dict[str, Any]:
    """The project's latest model: id, status, metrics, files and logged losses."""
    model_id, status, metrics = direct.execute(
        "SELECT m.id, m.status, m.metrics FROM pgml.models m JOIN pgml.projects p "
        "ON p.id = m.project_id WHERE p.name = %s ORDER BY m.id DESC LIMIT 1",
        [project],
    ).fetchone() or (None, None, None)
    files = dict(
        direct.execute(
            "SELECT path, sum(octet_length(data))::bigint FROM pgml.files WHERE model_id = %s "
            "GROUP BY path",
            [model_id],
        ).fetchall()
    )
    logs = [
        r[0]
        for r in direct.execute(
            "SELECT logs FROM pgml.logs WHERE model_id = %s ORDER BY id", [model_id]
        ).fetchall()
    ]
    manifest = direct.execute(
        "SELECT convert_from(data, 'UTF8')::jsonb FROM pgml.files "
        "WHERE model_id = %s AND path = 'pgml.json'",
        [model_id],
    ).fetchone()
    return {
        "id": model_id,
        "status": status,
        "metrics": metrics,
        "files": files,
        "losses": [entry["loss"] for entry in logs if "loss" in entry],
        "parameters": next((e for e in logs if "trainable_parameters" in e), None),
        "manifest": manifest[0] if manifest else None,
    }


def generate(proxy: ProxyProcess, project: str, text: str) -> str:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT pgml.generate(%s, %s, %s::jsonb)", (project, text, GENERATE))
        found = row.fetchone()
    assert found is not None and isinstance(found[0], str)
    return str(found[0])


def assert_learned_as_lora(model: dict[str, Any], full: dict[str, Any], notices: list[str]) -> None:
    metrics = model["metrics"]
    assert model["status"] == "successful"
    assert metrics["eval_loss"] < metrics["before_tuning"]["eval_loss"], metrics
    losses = model["losses"]
    assert len(losses) >= 5 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert set(model["files"]) == ADAPTER_FILES
    adapter, whole = sum(model["files"].values()), sum(full["files"].values())
    assert adapter < 0.1 * whole, (model["files"], full["files"])
    manifest = model["manifest"]
    assert manifest["kind"] == "adapter" and manifest["base_model"] in (GPT2, MARIAN)
    assert manifest["base_fingerprint"].startswith("sha256:")
    parameters = model["parameters"]
    assert parameters["tuning"] == "lora"
    assert 0 < parameters["trainable_parameters"] < parameters["total_parameters"] / 5
    shown = f"lora tuning: {parameters['trainable_parameters']:,} of "
    assert any(n.startswith(shown) for n in notices), notices


@pytest.fixture(scope="module")
def gpt2_full(tuner: ProxyProcess, direct: psycopg.Connection[Any], lines: str) -> dict[str, Any]:
    project = f"{lines}_full"
    row, notices = tune(
        tuner, project, "text-generation", lines, "text", GPT2, {"num_train_epochs": 1}
    )
    assert row == (project, "text-generation", GPT2, True)
    assert any(n.startswith("full tuning: ") and "(100.00%)" in n for n in notices), notices
    return model_of(direct, project)


@pytest.fixture(scope="module")
def gpt2_lora(
    tuner: ProxyProcess, direct: psycopg.Connection[Any], lines: str
) -> tuple[str, list[str]]:
    project = f"{lines}_lora"
    hyperparams = LORA_TRAINING | {"lora_config": {"r": 8, "lora_alpha": 16}}
    row, notices = tune(tuner, project, "text-generation", lines, "text", GPT2, hyperparams)
    assert row == (project, "text-generation", GPT2, True)
    return project, notices


def test_lora_text_generation_learns_and_stores_the_adapter(
    direct: psycopg.Connection[Any], gpt2_full: dict[str, Any], gpt2_lora: tuple[str, list[str]]
) -> None:
    project, notices = gpt2_lora
    model = model_of(direct, project)
    assert_learned_as_lora(model, gpt2_full, notices)
    assert model["metrics"]["perplexity"] < model["metrics"]["before_tuning"]["perplexity"]
    stored = direct.execute(
        "SELECT hyperparams FROM pgml.models WHERE id = %s", [model["id"]]
    ).fetchone()
    assert stored is not None and stored[0]["lora_config"] == {"r": 8, "lora_alpha": 16}


def test_lora_is_served_after_a_restart_with_an_empty_cache(
    cluster: PostgresCluster,
    tuner: ProxyProcess,
    gpt2_lora: tuple[str, list[str]],
    models_dir: Path,
    guide_datasets_dir: Path,
    tmp_path: Path,
) -> None:
    project, _ = gpt2_lora
    served = [generate(tuner, project, prompt) for prompt in PROMPTS]
    assert all(text.startswith(prompt) for text, prompt in zip(served, PROMPTS, strict=True))
    fresh = tuning_proxy(cluster, models_dir, guide_datasets_dir, tmp_path / "empty")
    try:
        assert [generate(fresh, project, prompt) for prompt in PROMPTS] == served
        log = fresh.log()
        assert "restored model" in log and "loaded base model gpt2" in log
    finally:
        fresh.stop()
    assert served != base_generations(models_dir)  # the adapter changes what is generated


def base_generations(models_dir: Path) -> list[str]:
    """What the untuned tiny GPT-2 generates for each prompt, greedily (as pgml.generate
    does for one text)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models_dir / GPT2)
    model = AutoModelForCausalLM.from_pretrained(models_dir / GPT2).eval()
    found = []
    for prompt in PROMPTS:
        encoded = tokenizer([prompt], return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**encoded, max_new_tokens=8, pad_token_id=tokenizer.eos_token_id)
        start = encoded["input_ids"].shape[1]
        found.append(prompt + tokenizer.decode(out[0, start:], skip_special_tokens=True))
    return found


def test_lora_translation_learns_and_is_served_after_a_restart(
    cluster: PostgresCluster,
    tuner: ProxyProcess,
    direct: psycopg.Connection[Any],
    pairs: str,
    models_dir: Path,
    guide_datasets_dir: Path,
    tmp_path: Path,
) -> None:
    full_project, lora_project = f"{pairs}_full", f"{pairs}_lora"
    lengths = {"max_length": 64}
    tune(tuner, full_project, "translation", pairs, "es", MARIAN, {"num_train_epochs": 1} | lengths)
    hyperparams = LORA_TRAINING | lengths | {"lora_config": {"r": 8}}
    row, notices = tune(tuner, lora_project, "translation", pairs, "es", MARIAN, hyperparams)
    assert row == (lora_project, "translation", MARIAN, True)
    model = model_of(direct, lora_project)
    assert_learned_as_lora(model, model_of(direct, full_project), notices)
    assert "bleu" in model["metrics"] and "bleu" in model["metrics"]["before_tuning"]
    served = generate(tuner, lora_project, SOURCE)
    fresh = tuning_proxy(cluster, models_dir, guide_datasets_dir, tmp_path / "empty")
    try:
        assert generate(fresh, lora_project, SOURCE) == served
        assert "loaded base model Helsinki-NLP/opus-mt-en-es" in fresh.log()
    finally:
        fresh.stop()


def metric(proxy_metrics: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", proxy_metrics, re.MULTILINE)
    assert found is not None, proxy_metrics
    return float(found.group(1))


def test_two_projects_on_one_base_share_its_weights(
    cluster: PostgresCluster,
    tuner: ProxyProcess,
    direct: psycopg.Connection[Any],
    lines: str,
    gpt2_lora: tuple[str, list[str]],
    models_dir: Path,
    guide_datasets_dir: Path,
    tmp_path: Path,
) -> None:
    first, _ = gpt2_lora
    spanish = f"{lines}_es"  # dropped with the module's tables: named after one of them
    direct.execute(f"CREATE TABLE {spanish} (text text)")
    with direct.cursor() as cur:
        cur.executemany(f"INSERT INTO {spanish} VALUES (%s)", [(s,) for s in SPANISH[:ROWS]])
    second = f"{lines}_lora_b"
    hyperparams = LORA_TRAINING | {"learning_rate": 0.05, "lora_config": {"r": 4}}
    tune(tuner, second, "text-generation", spanish, "text", GPT2, hyperparams)
    cache = tmp_path / "cache"
    # One proxy serves each project alone: what each adapter generates.
    alone = {}
    for project in (first, second):
        single = tuning_proxy(cluster, models_dir, guide_datasets_dir, cache / project)
        try:
            alone[project] = generate_all(single, project)
        finally:
            single.stop()
    assert alone[first] != alone[second]  # the adapters differ: a wrong switch would show

    port = free_port()
    both = tuning_proxy(
        cluster, models_dir, guide_datasets_dir, cache / "both", "--dashboard-port", str(port)
    )
    try:
        generate(both, first, PROMPT)
        one = metric(scrape(port), "pgml_proxy_model_parameter_bytes")
        with psycopg.connect(both.dsn(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT " + ", ".join(["pgml.generate(%s, %s::text[], %s::jsonb)"] * 3),
                [v for p in (first, second, first) for v in (p, PROMPTS, GENERATE)],
            ).fetchone()
        assert row == (alone[first], alone[second], alone[first])
        two = metric(scrape(port), "pgml_proxy_model_parameter_bytes")
        log = both.log()
    finally:
        both.stop()
    assert log.count("loaded base model gpt2") == 1
    assert log.count("of project") == 2  # both projects' models loaded, on the one base
    # The second project added its adapter only (r=4 on c_attn: 1,024 parameters), not a
    # second copy of the base model.
    assert 0 < two - one < 0.05 * one, (one, two)


def generate_all(proxy: ProxyProcess, project: str) -> list[str]:
    """The project's greedy continuations of every prompt of PROMPTS, in one call."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT pgml.generate(%s, %s::text[], %s::jsonb)", (project, PROMPTS, GENERATE)
        ).fetchone()
    assert row is not None and len(row[0]) == len(PROMPTS)
    return list(row[0])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def test_a_merged_adapter_is_stored_as_a_whole_model(
    cluster: PostgresCluster,
    tuner: ProxyProcess,
    direct: psycopg.Connection[Any],
    lines: str,
    models_dir: Path,
    guide_datasets_dir: Path,
    tmp_path: Path,
) -> None:
    project = f"{lines}_merged"
    hyperparams = LORA_TRAINING | {"lora_config": {"r": 8}, "merge_adapter": True}
    row, _ = tune(tuner, project, "text-generation", lines, "text", GPT2, hyperparams)
    assert row == (project, "text-generation", GPT2, True)
    model = model_of(direct, project)
    assert "model.safetensors" in model["files"] and "adapter_config.json" not in model["files"]
    assert model["manifest"]["kind"] == "full" and model["manifest"]["base_model"] == GPT2
    assert model["parameters"]["tuning"] == "lora"
    served = generate(tuner, project, PROMPT)
    fresh = tuning_proxy(cluster, models_dir, guide_datasets_dir, tmp_path / "empty")
    try:
        assert generate(fresh, project, PROMPT) == served
        assert "loaded base model" not in fresh.log()  # a whole model: no base to load
    finally:
        fresh.stop()
