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
