"""A trained model as tuning writes it and serving reads it.

A model folder holds the Hugging Face files — a whole model and its tokenizer, or a PEFT
adapter (``adapter_config.json``, ``adapter_model.safetensors``) that goes on top of a base
model found by name — and a manifest, ``pgml.json``: the task, the labels and their type,
the tokenisation lengths, the base model's name and revision, and how it was tuned.  The
ML libraries are imported only by the functions that load with them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = ("text-classification", "translation", "summarization", "text-generation")
SEQ2SEQ_TASKS = frozenset({"translation", "summarization"})
KEY_METRICS: dict[str, tuple[str, bool]] = {
    "text-classification": ("f1", True),
    "translation": ("bleu", True),
    "summarization": ("rougeL", True),
    "text-generation": ("perplexity", False),
    "regression": ("r2", True),
    "classification": ("f1", True),
    "clustering": ("silhouette", True),
    "decomposition": ("cumulative_explained_variance", True),
}
"""The metric a task's models are compared by, and whether higher is better."""

MANIFEST = "pgml.json"
FULL = "full"
"""The folder holds the whole model (fully tuned, or an adapter merged into its base)."""
ADAPTER = "adapter"
"""The folder holds a PEFT adapter; serving loads the base model and puts it on top."""

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_HUB_SNAPSHOT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True, slots=True)
class Manifest:
    task: str
    max_input_length: int
    max_target_length: int
    labels: list[str] = field(default_factory=list)
    label_type: str = "text"
    """``real`` when the label column was numeric or boolean, else ``text``."""
    kind: str = FULL
    base_model: str | None = None
    """The model name the project was tuned from (``pgml.models.algorithm``)."""
    base_revision: str | None = None
    """The hub commit of the base model, when it came from the Hugging Face cache."""
    base_fingerprint: str | None = None
    """:func:`fingerprint` of the base model's folder, checked when an adapter is served."""
    quantization: str | None = None
    """``4bit`` or ``8bit`` when the frozen base was quantised for training (QLoRA)."""
    trainable_parameters: int | None = None
    total_parameters: int | None = None

    @property
    def is_adapter(self) -> bool:
        return self.kind == ADAPTER

    def write(self, folder: Path) -> None:
        (folder / MANIFEST).write_text(json.dumps(dataclasses.asdict(self)), "utf-8")

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        data: dict[str, Any] = json.loads((folder / MANIFEST).read_text("utf-8"))
        known = {f.name for f in dataclasses.fields(cls)}
        data.setdefault("max_input_length", 512)
        data.setdefault("max_target_length", 128)
        return cls(**{k: v for k, v in data.items() if k in known})


def served_base(folder: Path) -> str | None:
    """The base model the adapter in ``folder`` is served on; None for any other model
    (a whole model, a classic one without a manifest)."""
    if not (folder / MANIFEST).is_file():
        return None
    manifest = Manifest.read(folder)
    return manifest.base_model if manifest.is_adapter else None


def model_class(task: str) -> Any:
    """The ``AutoModelFor...`` class a task's models are trained and served with."""
    import transformers

    if task == "text-classification":
        return transformers.AutoModelForSequenceClassification
    if task in SEQ2SEQ_TASKS:
        return transformers.AutoModelForSeq2SeqLM
    return transformers.AutoModelForCausalLM


def quantization_config(kind: str) -> Any:
    """bitsandbytes settings for a base model trained quantised (``Manifest.quantization``):
    QLoRA's NF4 with double quantisation and bfloat16 compute, or 8-bit."""
    import torch
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def sorted_labels(labels: set[str], label_type: str) -> list[str]:
    """Numeric labels in numeric order (booleans false, true), text labels in text order.
    A label's position in this order is its class id in the model."""
    if label_type == "real":
        return sorted(labels, key=_label_number)
    return sorted(labels)


def _label_number(label: str) -> float:
    if label in ("true", "false"):
        return 1.0 if label == "true" else 0.0
    return float(label)


def label_value(label: str, label_type: str) -> float | str:
    """What ``predict`` returns for a label: REAL for numeric labels, else the text."""
    return _label_number(label) if label_type == "real" else label


def fingerprint(folder: Path) -> str:
    """A cheap identity of a model folder: its config and the names and sizes of its
    weight files (hashing gigabytes of weights on every load would cost too much)."""
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.endswith(WEIGHT_SUFFIXES):
            digest.update(f"\0{path.name}\0{path.stat().st_size}".encode())
    return "sha256:" + digest.hexdigest()


def hub_revision(folder: Path) -> str | None:
    """The commit of a model folder in the Hugging Face cache (``snapshots/<commit>/``)."""
    resolved = folder.resolve()
    if resolved.parent.name == "snapshots" and _HUB_SNAPSHOT.fullmatch(resolved.name):
        return resolved.name
    return None
