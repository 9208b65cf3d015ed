"""The tiny stand-in models load, train and generate offline."""

from __future__ import annotations

import math
import pathlib

import pytest
import torch
from tokenizers import Tokenizer
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from tests.support.tiny_models import CORPUS, HUB_NAMES, build_models_dir

SEQ2SEQ = ["marian", "bart"]
GENERATIVE = [*SEQ2SEQ, "gpt2"]
MAX_LENGTH = {"marian": 512, "distilbert": 512, "bart": 1024, "gpt2": 1024}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return build_models_dir(tmp_path_factory.mktemp("models"))


def load_model(folder: pathlib.Path, key: str) -> PreTrainedModel:
    if key in SEQ2SEQ:
        return AutoModelForSeq2SeqLM.from_pretrained(folder)
    if key == "gpt2":
        return AutoModelForCausalLM.from_pretrained(folder)
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)


def test_layout(models_dir: pathlib.Path) -> None:
    for name in HUB_NAMES.values():
        files = {path.name for path in (models_dir / name).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
        assert "tokenizer_config.json" in files
    for key in GENERATIVE:
        assert (models_dir / HUB_NAMES[key] / "generation_config.json").is_file()


@pytest.mark.parametrize("key", list(HUB_NAMES))
def test_tokenizer_matches_config(models_dir: pathlib.Path, key: str) -> None:
    folder = models_dir / HUB_NAMES[key]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = load_model(folder, key)
    config = model.config
    assert config.model_type == key
    assert config.vocab_size == len(tokenizer)
    assert 500 <= len(tokenizer) <= 1000
    assert tokenizer.model_max_length == MAX_LENGTH[key]
    assert config.pad_token_id == tokenizer.pad_token_id
    if key != "distilbert":
        assert config.eos_token_id == tokenizer.eos_token_id
    # The class AutoTokenizer picks rebuilds the pipeline: it must encode as the trained one did.
    trained = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in [*CORPUS[::25], "Hello, World! 123"]:
        assert tokenizer(text)["input_ids"] == trained.encode(text).ids


@pytest.mark.parametrize("key", list(HUB_NAMES))
def test_forward_with_labels(models_dir: pathlib.Path, key: str) -> None:
    folder = models_dir / HUB_NAMES[key]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = load_model(folder, key)
    if key in SEQ2SEQ:
        batch = tokenizer(["I love SQL"], text_target=["Me encanta SQL"], return_tensors="pt")
    else:
        batch = tokenizer(["I love SQL"], return_tensors="pt")
        batch["labels"] = torch.tensor([1]) if key == "distilbert" else batch["input_ids"]
    loss = model(**batch).loss
    assert math.isfinite(loss.item())
    loss.backward()


@pytest.mark.parametrize("key", GENERATIVE)
def test_generate(models_dir: pathlib.Path, key: str) -> None:
    folder = models_dir / HUB_NAMES[key]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = load_model(folder, key)
    inputs = tokenizer(["While I wandered weak and weary"], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=5)
    text = tokenizer.decode(output[0], skip_special_tokens=True)
    assert isinstance(text, str)
    assert text
    assert "\x00" not in text


@pytest.mark.parametrize("key", list(HUB_NAMES))
def test_long_input_truncates_to_positions(models_dir: pathlib.Path, key: str) -> None:
    folder = models_dir / HUB_NAMES[key]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = load_model(folder, key)
    batch = tokenizer(["weary " * 2000], truncation=True, return_tensors="pt")
    assert batch["input_ids"].shape[1] == MAX_LENGTH[key]
    with torch.no_grad():
        model(**batch, labels=torch.tensor([0]) if key == "distilbert" else batch["input_ids"])


@pytest.mark.parametrize("key", SEQ2SEQ)
def test_text_target_labels_end_with_eos(models_dir: pathlib.Path, key: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(models_dir / HUB_NAMES[key])
    encoded = tokenizer("I love SQL", text_target="Me encanta SQL")
    assert encoded["input_ids"][-1] == tokenizer.eos_token_id
    assert encoded["labels"][-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in encoded["labels"][:-1]


def test_seq2seq_decoder_start(models_dir: pathlib.Path) -> None:
    marian = AutoModelForSeq2SeqLM.from_pretrained(models_dir / HUB_NAMES["marian"])
    assert marian.config.decoder_start_token_id == marian.config.pad_token_id
    bart = AutoModelForSeq2SeqLM.from_pretrained(models_dir / HUB_NAMES["bart"])
    assert bart.config.decoder_start_token_id == bart.config.eos_token_id
    bart_tokenizer = AutoTokenizer.from_pretrained(models_dir / HUB_NAMES["bart"])
    assert bart_tokenizer("SQL")["input_ids"][0] == bart_tokenizer.bos_token_id


def test_distilbert_tokenizer_lowercases(models_dir: pathlib.Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(models_dir / HUB_NAMES["distilbert"])
    assert tokenizer("I LOVE SQL")["input_ids"] == tokenizer("i love sql")["input_ids"]
    ids = tokenizer("I love SQL")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id
    assert ids[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "i love sql"


def test_gpt2_tokenizer_has_no_pad_token(models_dir: pathlib.Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(models_dir / HUB_NAMES["gpt2"])
    assert tokenizer.pad_token is None
    assert tokenizer.bos_token == tokenizer.eos_token == "<|endoftext|>"
    model = AutoModelForCausalLM.from_pretrained(models_dir / HUB_NAMES["gpt2"])
    assert model.generation_config.pad_token_id == tokenizer.eos_token_id
    text = "Me encanta SQL, while I wandered weak and weary."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_build_is_deterministic(models_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    again = build_models_dir(tmp_path)
    for path in sorted(models_dir.rglob("*")):
        if path.is_file():
            copy = again / path.relative_to(models_dir)
            assert copy.read_bytes() == path.read_bytes(), path.relative_to(models_dir)


def test_custom_corpus(tmp_path: pathlib.Path) -> None:
    corpus = ["SQL queries join tables.", "Las consultas SQL unen tablas."] * 5
    root = build_models_dir(tmp_path, corpus)
    for name in HUB_NAMES.values():
        tokenizer = AutoTokenizer.from_pretrained(root / name)
        assert len(tokenizer) < 500
