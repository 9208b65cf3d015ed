"""Prompts as sentence-transformers applies them: named in the model's settings, a
default one, and pooled with the text or (``include_prompt: false``) not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from handlers.embedding import SentenceEmbedder
from handlers.models import ModelResolver

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.fixture(scope="module", params=[True, False], ids=["pooled", "not-pooled"])
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("prompted") / "model"
    shutil.copytree(ModelResolver().resolve(MODEL), target)
    settings = json.loads((target / "config_sentence_transformers.json").read_text())
    settings |= {"prompts": PROMPTS, "default_prompt_name": "passage"}
    (target / "config_sentence_transformers.json").write_text(json.dumps(settings))
    pooling = json.loads((target / "1_Pooling" / "config.json").read_text())
    pooling["include_prompt"] = request.param
    (target / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return target


@pytest.mark.parametrize("prompt_name", ["query", None])
def test_prompts_embed_as_sentence_transformers_does(folder: Path, prompt_name: str | None) -> None:
    from sentence_transformers import SentenceTransformer

    texts = ["hello world", "a longer sentence about SQL and models"]
    reference = SentenceTransformer(str(folder), device="cpu")
    expected = reference.encode(texts, prompt_name=prompt_name, normalize_embeddings=True)
    found = SentenceEmbedder(folder).embed(texts, prompt_name=prompt_name)
    np.testing.assert_allclose(found, expected, atol=1e-5)


def test_an_unknown_prompt_name_lists_the_models_prompts(folder: Path) -> None:
    from handlers.errors import PgmlError

    with pytest.raises(PgmlError) as raised:
        SentenceEmbedder(folder).embed(["x"], prompt_name="title")
    assert raised.value.sqlstate == "22023"
    assert "passage, query" in str(raised.value.hint)
