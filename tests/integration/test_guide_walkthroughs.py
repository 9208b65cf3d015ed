"""The fine-tuning guide's four walkthroughs, their SQL verbatim through psql, against tiny
models of the guide's architectures (built by the test) and a datasets folder.

Each walkthrough runs in a database of its own, as a script fed to psql, the way a user
pastes it.  The answers have the guide's shapes; tiny random models cannot give its words.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.support.pgserver import BIN, PostgresCluster
from tests.support.proxyproc import ProxyProcess

TRANSLATION = """
SELECT pgml.load_dataset('kde4', kwargs => '{"lang1": "en", "lang2": "es"}');
SELECT * FROM pgml.kde4 LIMIT 5;
CREATE OR REPLACE VIEW kde4_en_to_es AS
SELECT translation->>'en' AS "en", translation->>'es' AS "es"
FROM pgml.kde4
LIMIT 10;
SELECT * FROM kde4_en_to_es LIMIT 10;
SELECT pgml.tune(
    'Translate English to Spanish',
    task => 'translation',
    relation_name => 'kde4_en_to_es',
    y_column_name => 'es', -- translate into spanish
    model_name => 'Helsinki-NLP/opus-mt-en-es',
    hyperparams => '{
        "learning_rate": 2e-5,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 16,
        "num_train_epochs": 1,
        "weight_decay": 0.01,
        "max_length": 128
    }',
    test_size => 0.5,
    test_sampling => 'last'
);
"""
TRANSLATE = """
SELECT pgml.generate('Translate English to Spanish', 'I love SQL')
AS spanish;
"""

CLASSIFICATION = """
SELECT pgml.load_dataset('imdb');
SELECT * FROM pgml.imdb LIMIT 1;
SELECT pgml.tune(
    'IMDB Review Sentiment',
    task => 'text-classification',
    relation_name => 'pgml.imdb',
    y_column_name => 'label',
    model_name => 'distilbert-base-uncased',
    hyperparams => '{
        "learning_rate": 2e-5,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 16,
        "num_train_epochs": 1,
        "weight_decay": 0.01
    }',
    test_size => 0.5,
    test_sampling => 'last'
);
"""
PREDICT = """
SELECT pgml.predict('IMDB Review Sentiment', 'I love SQL')
AS sentiment;
"""
PREDICT_PROBA = """
SELECT pgml.predict_proba('IMDB Review Sentiment', 'I love SQL')
AS sentiment;
"""

SUMMARIZATION = """
SELECT pgml.load_dataset('billsum', kwargs => '{"split": "ca_test"}');
SELECT * FROM pgml.billsum LIMIT 1;
CREATE OR REPLACE VIEW billsum_training_data
AS SELECT "text", summary FROM pgml.billsum;
CREATE OR REPLACE VIEW billsum_training_data
AS SELECT title || '\\n' || "text" AS "text", summary FROM pgml.billsum 
LIMIT 10;
SELECT pgml.tune(
    'Legal Summarization',
    task => 'summarization',
    relation_name => 'billsum_training_data',
    y_column_name => 'summary',
    model_name => 'sshleifer/distilbart-xsum-12-1',
    hyperparams => '{
        "learning_rate": 2e-5,
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 2,
        "num_train_epochs": 1,
        "weight_decay": 0.01,
        "max_length": 1024
    }',
    test_size => 0.2,
    test_sampling => 'last'
);
"""

GENERATION = """
SELECT pgml.load_dataset('bookcorpus', "limit" => 100);

SELECT pgml.tune(
    'GPT Generator',
    task => 'text-generation',
    relation_name => 'pgml.bookcorpus',
    y_column_name => 'text',
    model_name => 'gpt2',
    hyperparams => '{
        "learning_rate": 2e-5,
        "num_train_epochs": 1
    }',
    test_size => 0.2,
    test_sampling => 'last'
);

SELECT pgml.generate('GPT Generator', 'While I wandered weak and weary');
"""


@pytest.fixture
def database(cluster: PostgresCluster) -> Iterator[str]:
    name = f"guide_{uuid.uuid4().hex[:8]}"
    cluster.psql(f"CREATE DATABASE {name}")
    yield name
    cluster.psql(f"DROP DATABASE {name} WITH (FORCE)")


def run_script(proxy: ProxyProcess, database: str, script: str) -> subprocess.CompletedProcess[str]:
    """psql reading the script from its standard input, stopping at the first error."""
    out = subprocess.run(
        [str(BIN / "psql"), "-X", "-v", "ON_ERROR_STOP=1", proxy.dsn(database=database)],
        input=script,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def value(proxy: ProxyProcess, database: str, sql: str) -> str:
    out = subprocess.run(
        [
            str(BIN / "psql"),
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            proxy.dsn(database=database),
        ],
        input=sql,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def check_model(proxy: ProxyProcess, database: str, project: str, metric: str) -> None:
    """One successful model, deployed, with the task's metric before and after tuning,
    its files stored and its training logged."""
    row = value(
        proxy,
        database,
        "SELECT m.status, m.metrics::text, d.id IS NOT NULL, "
        "(SELECT count(*) FROM pgml.logs l WHERE l.model_id = m.id), "
        "(SELECT count(*) FROM pgml.files f WHERE f.model_id = m.id) "
        "FROM pgml.models m JOIN pgml.projects p ON p.id = m.project_id "
        f"LEFT JOIN pgml.deployed_models d ON d.id = m.id WHERE p.name = '{project}'",
    )
    status, metrics, deployed, logs, files = row.split("|")
    assert status == "successful"
    found = json.loads(metrics)
    assert metric in found and metric in found["before_tuning"]
    assert deployed == "t"
    assert int(logs) >= 2 and int(files) >= 3


def test_translation(tuner: ProxyProcess, database: str) -> None:
    out = run_script(tuner, database, TRANSLATION)
    assert '("Translate English to Spanish",translation,Helsinki-NLP/opus-mt-en-es,t)' in (
        out.stdout
    )
    assert "NOTICE:" in out.stderr and "bleu" in out.stderr
    check_model(tuner, database, "Translate English to Spanish", "bleu")
    out = run_script(tuner, database, TRANSLATE)
    lines = out.stdout.strip().splitlines()
    assert lines[0].strip() == "spanish" and lines[-1] == "(1 row)"
    spanish = value(tuner, database, TRANSLATE)
    assert isinstance(spanish, str) and spanish


def test_text_classification(tuner: ProxyProcess, database: str) -> None:
    out = run_script(tuner, database, CLASSIFICATION)
    assert '("IMDB Review Sentiment",text-classification,distilbert-base-uncased,t)' in (out.stdout)
    check_model(tuner, database, "IMDB Review Sentiment", "f1")
    snapshot = json.loads(
        value(tuner, database, "SELECT analysis::text FROM pgml.snapshots ORDER BY id LIMIT 1")
    )
    assert snapshot["test_rows"] == 24  # 'last' half: the imdb test split
    out = run_script(tuner, database, PREDICT)
    assert out.stdout.splitlines()[0].strip() == "sentiment"
    assert value(tuner, database, PREDICT) in ("0", "1")
    assert value(tuner, database, "SELECT pg_typeof(" + PREDICT.strip()[7:-14] + ")") == "real"
    probabilities = json.loads(value(tuner, database, PREDICT_PROBA))
    assert len(probabilities) == 2 and abs(sum(probabilities) - 1) < 1e-5


def test_summarization(tuner: ProxyProcess, database: str) -> None:
    out = run_script(tuner, database, SUMMARIZATION)
    assert '("Legal Summarization",summarization,sshleifer/distilbart-xsum-12-1,t)' in (out.stdout)
    check_model(tuner, database, "Legal Summarization", "rougeL")
    summary = value(
        tuner,
        database,
        "SELECT pgml.predict('Legal Summarization', text) FROM pgml.billsum LIMIT 1",
    )
    assert summary


def test_text_generation(tuner: ProxyProcess, database: str) -> None:
    out = run_script(tuner, database, GENERATION)
    assert '("GPT Generator",text-generation,gpt2,t)' in out.stdout
    assert "While I wandered weak and weary" in out.stdout.split("generate")[-1]
    check_model(tuner, database, "GPT Generator", "perplexity")
