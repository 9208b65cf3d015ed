"""Tiny random models of each text pipeline kind, for ``pgml.transform`` and ``pgml.rank``.

``build_pipeline_models(root)`` lays out the four models of :mod:`tests.support.tiny_models`
and, next to them, heads on the tiny DistilBERT (its tokenizer, random weights) under
``tiny/<kind>``, and a chat model: the tiny GPT-2 with a chat template.
``build_long_generator(root)`` adds a GPT-2 that generates as long as asked.
"""

from __future__ import annotations

import pathlib
import shutil

import torch
from transformers import (
    AutoTokenizer,
    DistilBertConfig,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    GPT2Config,
    GPT2LMHeadModel,
)

from tests.support.tiny_models import HUB_NAMES, build_models_dir

SENTIMENT = "tiny/sentiment"
NER = "tiny/ner"
NLI = "tiny/nli"
SQUAD = "tiny/squad"
CROSS_ENCODER = "tiny/cross-encoder"
CHAT = "tiny/chat"
TRANSLATION = HUB_NAMES["marian"]
SUMMARIZATION = HUB_NAMES["bart"]
GENERATION = HUB_NAMES["gpt2"]
FILL_MASK = HUB_NAMES["distilbert"]
LONG = "tiny/long-gpt2"
"""A tiny GPT-2 with room for a million positions: a generation as long as one asks."""
UNBOUNDED = 1_000_000

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_HEADS = {
    SENTIMENT: (DistilBertForSequenceClassification, ["NEGATIVE", "POSITIVE"]),
    NER: (DistilBertForTokenClassification, ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]),
    NLI: (DistilBertForSequenceClassification, ["entailment", "neutral", "contradiction"]),
    SQUAD: (DistilBertForQuestionAnswering, []),
    CROSS_ENCODER: (DistilBertForSequenceClassification, ["LABEL_0"]),
}


def build_pipeline_models(root: pathlib.Path) -> pathlib.Path:
    build_models_dir(root)
    base = root / FILL_MASK
    tokenizer = AutoTokenizer.from_pretrained(base)
    with torch.random.fork_rng(devices=[]):
        for index, (name, (cls, labels)) in enumerate(_HEADS.items()):
            torch.manual_seed(100 + index)
            options = {}
            if labels:
                options = {
                    "num_labels": len(labels),
                    "id2label": dict(enumerate(labels)),
                    "label2id": {label: i for i, label in enumerate(labels)},
                }
            config = DistilBertConfig.from_pretrained(base, **options)
            folder = root / name
            cls(config).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
    chat = root / CHAT
    shutil.copytree(root / GENERATION, chat, dirs_exist_ok=True)
    chat_tokenizer = AutoTokenizer.from_pretrained(chat)
    chat_tokenizer.chat_template = CHAT_TEMPLATE
    chat_tokenizer.save_pretrained(chat)
    return root


def build_long_generator(root: pathlib.Path) -> pathlib.Path:
    """:data:`LONG` beside the pipeline models in ``root`` (built first)."""
    tokenizer = AutoTokenizer.from_pretrained(root / GENERATION)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=UNBOUNDED + 64, n_embd=8, n_layer=1, n_head=2
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same weights every run: their greedy 400 tokens
        GPT2LMHeadModel(config).save_pretrained(root / LONG)  # stream in ~260 pieces
    tokenizer.save_pretrained(root / LONG)
    return root
