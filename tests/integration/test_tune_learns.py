"""A model that really learns: all-MiniLM-L6-v2 (pretrained, offline) tuned through
pgml.tune on a separable dataset the test generates, fully and as a LoRA adapter; its F1
rises far above the untuned model's, the adapter learns as well as full tuning does, and
predictions on unseen sentences follow the labels."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
GOOD = ["delightful", "superb", "wonderful", "excellent", "charming", "brilliant", "lovely"]
BAD = ["dreadful", "awful", "terrible", "horrible", "boring", "miserable", "painful"]
THINGS = ["dinner", "concert", "holiday", "lecture", "meeting", "trip", "show", "book"]
UNSEEN = {
    "The picnic was lovely, truly superb.": "positive",
    "The picnic was horrible, truly painful.": "negative",
}
TRAINING = {"num_train_epochs": 3, "per_device_train_batch_size": 16}


def sentence(rng: random.Random, good: bool) -> str:
    words = GOOD if good else BAD
    return f"The {rng.choice(THINGS)} was {rng.choice(words)}, truly {rng.choice(words)}."


@dataclass
class Tuned:
    metrics: dict[str, Any]
    losses: list[float]
    predictions: dict[str, str]
    stored_bytes: int
    parameters: dict[str, Any]


@pytest.fixture(scope="module")
def sentences(cluster: PostgresCluster) -> Iterator[str]:
    rng = random.Random(11)
    table = f"learns_{uuid.uuid4().hex[:8]}"
    rows = [
        (sentence(rng, i % 2 == 0), "positive" if i % 2 == 0 else "negative") for i in range(160)
    ]
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (review text, sentiment text)")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} VALUES (%s, %s)", rows)
    yield table
    cluster.psql(f"DROP TABLE {table}")


def tune_sentiment(tuner: ProxyProcess, table: str, project: str, hyperparams: Any) -> Tuned:
    with psycopg.connect(tuner.dsn(), autocommit=True) as conn:
        tuned = conn.execute(
            "SELECT * FROM pgml.tune(%s, task => 'text_classification', relation_name => %s, "
            "y_column_name => 'sentiment', model_name => %s, hyperparams => %s::jsonb, "
            "test_size => 0.25, test_sampling => 'stratified')",
            (project, table, MODEL, json.dumps(hyperparams)),
        ).fetchone()
        assert tuned == (project, "text-classification", MODEL, True)
        model_id, metrics = conn.execute(
            "SELECT m.id, m.metrics FROM pgml.models m JOIN pgml.projects p "
            "ON p.id = m.project_id WHERE p.name = %s",
            (project,),
        ).fetchone() or (None, None)
        predictions = {
            text: (conn.execute("SELECT pgml.predict(%s, %s)", (project, text)).fetchone() or [""])[
                0
            ]
            for text in UNSEEN
        }
        (curve,) = conn.execute(
            "SELECT json_agg(logs ORDER BY id) FROM pgml.logs WHERE model_id = %s", (model_id,)
        ).fetchone() or (None,)
        (stored,) = conn.execute(
            "SELECT sum(octet_length(data)) FROM pgml.files WHERE model_id = %s", (model_id,)
        ).fetchone() or (None,)
    assert json.dumps(curve)  # plain JSON, readable by any client
    return Tuned(
        metrics,
        [entry["loss"] for entry in curve if "loss" in entry],
        predictions,
        int(stored),
        next(entry for entry in curve if "trainable_parameters" in entry),
    )


def assert_learned(tuned: Tuned) -> None:
    metrics = tuned.metrics
    assert metrics["f1"] >= 0.9, metrics
    assert metrics["f1"] - metrics["before_tuning"]["f1"] >= 0.3, metrics
    assert metrics["accuracy"] >= 0.9 and metrics["roc_auc"] >= 0.9
    assert tuned.predictions == UNSEEN
    assert len(tuned.losses) >= 5 and tuned.losses[-1] < tuned.losses[0]


@pytest.fixture(scope="module")
def full(tuner: ProxyProcess, sentences: str) -> Tuned:
    return tune_sentiment(tuner, sentences, sentences, TRAINING | {"learning_rate": 0.0005})


def test_minilm_learns_sentiment(full: Tuned) -> None:
    assert_learned(full)
    assert full.parameters["tuning"] == "full"
    assert full.parameters["trainable_parameters"] == full.parameters["total_parameters"]


def test_minilm_lora_learns_like_full_tuning(
    tuner: ProxyProcess, sentences: str, full: Tuned
) -> None:
    lora = tune_sentiment(
        tuner,
        sentences,
        f"{sentences}_lora",
        TRAINING | {"learning_rate": 0.002, "lora_config": {"r": 8, "lora_alpha": 16}},
    )
    assert_learned(lora)
    assert lora.metrics["f1"] >= full.metrics["f1"] - 0.05, (lora.metrics, full.metrics)
    assert lora.parameters["tuning"] == "lora"
    # query and value adapters of 6 layers and the new classifier: well under 1 %
    assert lora.parameters["trainable_parameters"] < 0.01 * lora.parameters["total_parameters"]
    assert lora.stored_bytes < 0.02 * full.stored_bytes, (lora.stored_bytes, full.stored_bytes)
