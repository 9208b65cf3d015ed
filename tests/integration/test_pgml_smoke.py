"""pgml calls in a simple Query, answered by the proxy through psql."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.pgserver import BIN
from tests.support.proxyproc import ProxyProcess

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def psql(proxy: ProxyProcess, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "psql"), "-X", "-A", "-F", "|", proxy.dsn(), "-c", sql],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_version(proxy: ProxyProcess) -> None:
    import proxy as package

    out = psql(proxy, "SELECT pgml.version()")
    assert out.stdout.splitlines()[:2] == ["version", package.__version__]


@pytest.mark.parametrize("text", ["hello world", "It's a 'quoted' text; DROP TABLE x; --"])
def test_embed_literal_matches_sentence_transformers(proxy: ProxyProcess, text: str) -> None:
    from sentence_transformers import SentenceTransformer

    from handlers.models import ModelResolver

    reference = SentenceTransformer(str(ModelResolver().resolve(MODEL)), device="cpu")
    expected = reference.encode([text], normalize_embeddings=True)[0]
    literal = text.replace("'", "''")
    out = psql(proxy, f"SELECT pgml.embed('{MODEL}', '{literal}') AS e")
    assert out.returncode == 0, out.stderr
    header, value = out.stdout.splitlines()[:2]
    assert header == "e"
    got = [float(v) for v in value.strip("{}").split(",")]
    assert len(got) == len(expected) == 384
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-5


def test_embed_takes_sentence_transformers_options(proxy: ProxyProcess) -> None:
    """``prompt`` as sentence-transformers' ``encode`` takes it, ``normalize_embeddings``
    as ``normalize``; an unknown prompt name, an instruction or another device refused."""
    import numpy as np
    import psycopg
    from sentence_transformers import SentenceTransformer

    from handlers.models import ModelResolver

    reference = SentenceTransformer(str(ModelResolver().resolve(MODEL)), device="cpu")
    expected = reference.encode(["hello"], prompt="query: ", normalize_embeddings=True)[0]
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        (got,) = conn.execute(
            "SELECT pgml.embed(%s, 'hello', '{\"prompt\": \"query: \"}')", [MODEL]
        ).fetchone() or (None,)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        (plain,) = conn.execute(
            "SELECT pgml.embed(%s, 'query: hello', '{\"normalize_embeddings\": false}')", [MODEL]
        ).fetchone() or (None,)
        assert abs(np.linalg.norm(plain) - 1) > 1e-3
        np.testing.assert_allclose(np.array(plain) / np.linalg.norm(plain), got, atol=1e-5)
        for kwargs, sqlstate in (
            ('{"prompt_name": "query"}', "22023"),
            ('{"instruction": "Represent the query: "}', "0A000"),
            ('{"device": "cuda"}', "0A000"),
            ('{"prompt": 3}', "22023"),
            ('{"normalize": true, "normalize_embeddings": true}', "22023"),
        ):
            with pytest.raises(psycopg.Error) as raised:
                conn.execute("SELECT pgml.embed(%s, 'hello', %s)", [MODEL, kwargs])
            assert raised.value.sqlstate == sqlstate, kwargs
        (same,) = conn.execute(
            "SELECT pgml.embed(%s, 'query: hello', '{\"device\": \"cpu\"}')", [MODEL]
        ).fetchone() or (None,)
        np.testing.assert_allclose(same, got, atol=1e-6)
