"""Sentence embeddings with a Hugging Face encoder: mean pooling over the attention mask,
then L2 normalisation, as sentence-transformers computes them."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from handlers.errors import invalid_argument


class SentenceEmbedder:
    """One loaded encoder; thread-safe, meant to be shared by every session."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = path
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.dimensions = int(self.model.config.hidden_size)
        self._torch = torch
        self._lock = threading.Lock()

    def embed(
        self, texts: list[str], *, normalize: bool = True, max_length: int | None = None
    ) -> list[list[float]]:
        if not texts:
            return []
        torch = self._torch
        limit = max_length or min(self.tokenizer.model_max_length, 512)
        with self._lock, torch.inference_mode():
            tokens = self.tokenizer(
                texts, padding=True, truncation=True, max_length=limit, return_tensors="pt"
            ).to(self.device)
            hidden = self.model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            result: list[list[float]] = pooled.float().cpu().tolist()
        return result


def embed_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Validate ``pgml.embed``'s kwargs: ``normalize`` (bool) and ``max_length`` (int)."""
    unknown = sorted(set(kwargs) - {"normalize", "max_length"})
    if unknown:
        raise invalid_argument(
            f'unknown pgml.embed option "{unknown[0]}"', hint="Options: normalize, max_length."
        )
    options: dict[str, Any] = {}
    if "normalize" in kwargs:
        if not isinstance(kwargs["normalize"], bool):
            raise invalid_argument("pgml.embed option normalize must be true or false")
        options["normalize"] = kwargs["normalize"]
    if "max_length" in kwargs:
        value = kwargs["max_length"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise invalid_argument("pgml.embed option max_length must be a positive integer")
        options["max_length"] = value
    return options
