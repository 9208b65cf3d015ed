"""A model that really learns: all-MiniLM-L6-v2 (pretrained, offline) tuned through
pgml.tune on a separable dataset the test generates; its F1 rises far above the untuned
model's, and predictions on unseen sentences follow the labels."""

from __future__ import annotations

import json
import random
import uuid

import psycopg

from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess

GOOD = ["delightful", "superb", "wonderful", "excellent", "charming", "brilliant", "lovely"]
BAD = ["dreadful", "awful", "terrible", "horrible", "boring", "miserable", "painful"]
THINGS = ["dinner", "concert", "holiday", "lecture", "meeting", "trip", "show", "book"]


def sentence(rng: random.Random, good: bool) -> str:
    words = GOOD if good else BAD
    return f"The {rng.choice(THINGS)} was {rng.choice(words)}, truly {rng.choice(words)}."


def test_minilm_learns_sentiment(cluster: PostgresCluster, tuner: ProxyProcess) -> None:
    rng = random.Random(11)
    table = f"learns_{uuid.uuid4().hex[:8]}"
    rows = [
        (sentence(rng, i % 2 == 0), "positive" if i % 2 == 0 else "negative") for i in range(160)
    ]
    with psycopg.connect(tuner.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (review text, sentiment text)")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} VALUES (%s, %s)", rows)
        tuned = conn.execute(
            "SELECT * FROM pgml.tune(%s, task => 'text_classification', relation_name => %s, "
            "y_column_name => 'sentiment', "
            "model_name => 'sentence-transformers/all-MiniLM-L6-v2', "
            """hyperparams => '{"num_train_epochs": 3, "learning_rate": 0.0005, """
            """"per_device_train_batch_size": 16}', test_size => 0.25, """
            "test_sampling => 'stratified')",
            (table, table),
        ).fetchone()
        assert tuned == (
            table,
            "text-classification",
            "sentence-transformers/all-MiniLM-L6-v2",
            True,
        )
        (metrics,) = conn.execute(
            "SELECT m.metrics FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
            "WHERE p.name = %s",
            (table,),
        ).fetchone() or (None,)
        assert metrics["f1"] >= 0.9, metrics
        assert metrics["f1"] - metrics["before_tuning"]["f1"] >= 0.3, metrics
        assert metrics["accuracy"] >= 0.9 and metrics["roc_auc"] >= 0.9
        unseen = {
            "The picnic was lovely, truly superb.": "positive",
            "The picnic was horrible, truly painful.": "negative",
        }
        for text, label in unseen.items():
            (found,) = conn.execute("SELECT pgml.predict(%s, %s)", (table, text)).fetchone() or (
                None,
            )
            assert found == label
        (curve,) = conn.execute(
            "SELECT json_agg(l.logs ORDER BY l.id) FROM pgml.logs l JOIN pgml.projects p "
            "ON p.id = l.project_id WHERE p.name = %s",
            (table,),
        ).fetchone() or (None,)
        losses = [entry["loss"] for entry in curve if "loss" in entry]
        assert len(losses) >= 5 and losses[-1] < losses[0]
        assert json.dumps(curve)  # plain JSON, readable by any client
        conn.execute(f"DROP TABLE {table}")
