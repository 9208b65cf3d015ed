"""One memory budget for every loaded model (``--model-memory``), and what may be loaded
(``--allow-models``, ``--trust-remote-code``), against a real proxy process."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration._transform import MINILM, dashboard_url, model_proxy
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess
from tests.support.tiny_pipelines import GENERATION, NER, NLI, SENTIMENT, build_pipeline_models
from tests.support.webclient import logged_in

THREE = {
    SENTIMENT: "text-classification",
    NLI: "text-classification",
    NER: "token-classification",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pipeline_models(tmp_path_factory.mktemp("pipelines"))


def loaded_size(models: Path, name: str) -> int:
    """What the proxy will count for the model: its parameters and buffers in float32."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from handlers.modelcache import measure

    loader: Any = (
        AutoModelForTokenClassification if name == NER else AutoModelForSequenceClassification
    )
    return measure(loader.from_pretrained(models / name))


@pytest.fixture(scope="module")
def budget(models: Path) -> int:
    """Room for any two of the three models, not for all three."""
    sizes = [loaded_size(models, name) for name in THREE]
    return sum(sizes) - min(sizes) // 2


@pytest.fixture(scope="module")
def limited(cluster: PostgresCluster, models: Path, budget: int) -> Iterator[ProxyProcess]:
    process = model_proxy(
        cluster,
        models,
        "--model-memory",
        str(budget),
        "--allow-models",
        "tiny/*,sentence-transformers/*",
        "--trust-remote-code",
        NER,
        "--dashboard-metrics-login",  # so that /metrics names the models
        "true",
    )
    yield process
    process.stop()


@pytest.fixture
def conn(limited: ProxyProcess) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(limited.dsn(), autocommit=True) as connection:
        yield connection


def call(conn: psycopg.Connection[Any], model: str, **options: Any) -> Any:
    spec = json.dumps({"task": THREE.get(model, "text-classification"), "model": model, **options})
    row = conn.execute("SELECT pgml.transform(%s::jsonb, inputs => ARRAY['I love SQL'])", [spec])
    return row.fetchone()


def metrics(proxy: ProxyProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``/metrics`` read as the superuser (HTTP Basic; it is trusted from 127.0.0.1)."""
    login = "Basic " + base64.b64encode(b"postgres:").decode()
    request = urllib.request.Request(
        f"{dashboard_url(proxy)}/metrics", headers={"Authorization": login}
    )
    with urllib.request.urlopen(request, timeout=30) as page:
        text = page.read().decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def loaded(proxy: ProxyProcess) -> dict[str, float]:
    return {
        labels["model"].split(" (")[0]: value
        for labels, value in metrics(proxy).get("pgml_proxy_model_bytes", [])
    }


def used(proxy: ProxyProcess) -> float:
    return metrics(proxy)["pgml_proxy_model_memory_used_bytes"][0][1]


def test_least_recently_used_model_is_evicted_within_the_budget(
    limited: ProxyProcess, conn: psycopg.Connection[Any], budget: int
) -> None:
    for name in THREE:
        assert call(conn, name) is not None
        assert used(limited) <= budget
    assert set(loaded(limited)) == {NLI, NER}, "the first model loaded is the least recent"
    assert call(conn, NLI) is not None  # NER is now the least recently used
    assert call(conn, SENTIMENT) is not None
    assert set(loaded(limited)) == {SENTIMENT, NLI}
    assert used(limited) <= budget
    evictions = metrics(limited)["pgml_proxy_model_evictions_total"][0][1]
    assert evictions >= 2
    html = logged_in(dashboard_url(limited)).get("/loaded").body
    assert f"{SENTIMENT} (text-classification)" in html and NER not in html


def test_a_model_larger_than_the_budget_is_refused_and_the_session_goes_on(
    limited: ProxyProcess, conn: psycopg.Connection[Any], budget: int
) -> None:
    for sql in (
        f"""SELECT pgml.transform('{{"task": "feature-extraction", "model": "{MINILM}"}}'::jsonb,"""
        " inputs => ARRAY['hello'])",
        f"SELECT pgml.embed('{MINILM}', 'hello')",
    ):
        with pytest.raises(psycopg.errors.OutOfMemory) as caught:
            conn.execute(sql).fetchall()
        error = caught.value
        assert error.sqlstate == "53200"
        assert MINILM in str(error) and f"{budget} bytes" in str(error)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert call(conn, SENTIMENT) is not None
    assert used(limited) <= budget


def test_models_outside_the_allow_list_are_refused(conn: psycopg.Connection[Any]) -> None:
    for sql in (
        "SELECT pgml.transform("
        f"""'{{"task": "text-generation", "model": "{GENERATION}"}}'::jsonb,"""
        " inputs => ARRAY['hello'])",
        "SELECT pgml.embed('other/model', 'hello')",
        "SELECT * FROM pgml.rank('other/model', 'q', ARRAY['a'])",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
            conn.execute(sql).fetchall()
        assert caught.value.sqlstate == "42501"
        assert "--allow-models" in str(caught.value)
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_remote_code_only_for_trusted_models(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        call(conn, SENTIMENT, trust_remote_code=True)
    assert SENTIMENT in str(caught.value) and "--trust-remote-code" in str(caught.value)
    assert conn.execute("SELECT 1").fetchone() == (1,)
    assert call(conn, NER, trust_remote_code=True) is not None
    # pgml.embed's option, as PostgresML took it: the same vector as without it
    trusting = json.dumps({"trust_remote_code": True})
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="--trust-remote-code"):
        conn.execute("SELECT pgml.embed(%s, 'x', %s)", [SENTIMENT, trusting])
    (trusted,) = conn.execute("SELECT pgml.embed(%s, 'x', %s)", [NER, trusting]).fetchone() or ()
    (plain,) = conn.execute("SELECT pgml.embed(%s, 'x')", [NER]).fetchone() or ()
    assert trusted == plain and len(plain) > 0
