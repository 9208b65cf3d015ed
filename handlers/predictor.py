"""A deployed model loaded for serving: classification, sequence-to-sequence or causal
generation.  Methods block (run them in a worker thread); one lock per model keeps the
tokenizer and the device to one batch at a time."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from handlers.device import inference_dtype
from handlers.errors import invalid_argument
from handlers.tuning.options import SEQ2SEQ_TASKS
from handlers.tuning.snapshot import label_value
from handlers.tuning.training import MANIFEST

DEFAULT_NEW_TOKENS = 64
"""Tokens ``generate`` adds to a text-generation prompt unless the config says otherwise."""
PIPELINE_OPTIONS = frozenset({"return_full_text"})


class Predictor:
    def __init__(self, path: Path, device: str) -> None:
        import torch
        import transformers
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForSeq2SeqLM,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        manifest = json.loads((path / MANIFEST).read_text("utf-8"))
        self.task: str = manifest["task"]
        self.labels: list[str] = manifest.get("labels", [])
        self.label_type: str = manifest.get("label_type", "text")
        self.max_input_length = int(manifest.get("max_input_length") or 512)
        self.max_target_length = int(manifest.get("max_target_length") or 128)
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.task == "text-classification":
            loader: Any = AutoModelForSequenceClassification
        elif self.task in SEQ2SEQ_TASKS:
            loader = AutoModelForSeq2SeqLM
        else:
            loader = AutoModelForCausalLM
            self.tokenizer.padding_side = "left"  # generation continues the prompt's end
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model = loader.from_pretrained(path, dtype=inference_dtype(device)).to(device).eval()
        self._torch = torch
        self._lock = threading.Lock()

    @property
    def generates_text(self) -> bool:
        return self.task != "text-classification"

    def _encode(self, texts: list[str]) -> Any:
        return self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_input_length,
            return_tensors="pt",
        ).to(self.device)

    def probabilities(self, texts: list[str]) -> list[list[float]]:
        torch = self._torch
        with self._lock, torch.inference_mode():
            logits = self.model(**self._encode(texts)).logits
            found: list[list[float]] = torch.softmax(logits.float(), dim=-1).cpu().tolist()
        return found

    def predict(self, texts: list[str]) -> list[Any]:
        """Labels for a classifier (REAL or TEXT as the label column was), else text."""
        if self.generates_text:
            return self.generate(texts, {})
        return [
            label_value(self.labels[max(range(len(p)), key=p.__getitem__)], self.label_type)
            for p in self.probabilities(texts)
        ]

    def generate(self, texts: list[str], config: dict[str, Any]) -> list[str]:
        torch = self._torch
        options = {k: v for k, v in config.items() if k not in PIPELINE_OPTIONS}
        full_text = bool(config.get("return_full_text", True))
        if "max_new_tokens" not in options and "max_length" not in options:
            options["max_new_tokens"] = (
                self.max_target_length if self.task in SEQ2SEQ_TASKS else DEFAULT_NEW_TOKENS
            )
        options.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        with self._lock, torch.inference_mode():
            encoded = self._encode(texts)
            generated = self.model.generate(**encoded, **options)
            if self.task not in SEQ2SEQ_TASKS:
                prompt = encoded["input_ids"].shape[1]
                generated = generated[:, prompt:]
            decoded = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        if self.task in SEQ2SEQ_TASKS or not full_text:
            return [text.strip() for text in decoded]
        return [prompt + text for prompt, text in zip(texts, decoded, strict=True)]


def generation_options(config: Any) -> dict[str, Any]:
    """``pgml.generate``'s config: keys of ``GenerationConfig`` and ``return_full_text``."""
    from transformers import GenerationConfig

    if isinstance(config, str):
        config = json.loads(config)
    if not isinstance(config, dict):
        raise invalid_argument("config must be a JSON object", hint="""'{"max_new_tokens": 20}'""")
    known = set(GenerationConfig().to_dict()) | PIPELINE_OPTIONS  # type: ignore[no-untyped-call]
    unknown = sorted(set(config) - known)
    if unknown:
        raise invalid_argument(
            f'unknown generation option "{unknown[0]}"',
            hint="Options are the fields of transformers.GenerationConfig (max_new_tokens, "
            "num_beams, do_sample, temperature, top_p, ...).",
        )
    try:
        GenerationConfig(  # type: ignore[no-untyped-call]
            **{k: v for k, v in config.items() if k not in PIPELINE_OPTIONS}
        )
    except (TypeError, ValueError) as exc:
        raise invalid_argument(f"bad generation option: {exc}") from exc
    return dict(config)
