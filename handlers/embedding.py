"""Sentence embeddings with a Hugging Face encoder: mean pooling over the attention mask,
then L2 normalisation, as sentence-transformers computes them."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from handlers.errors import PgmlError, invalid_argument


class SentenceEmbedder:
    """One loaded encoder; thread-safe, meant to be shared by every session."""

    def __init__(self, path: Path, device: str = "cpu", trust_remote_code: bool = False) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = path
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model = (
            AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code).to(device).eval()
        )
        self.dimensions = int(self.model.config.hidden_size)
        settings = _json(path / "config_sentence_transformers.json")
        self.prompts: dict[str, str] = dict(settings.get("prompts") or {})
        """The model's named prompts (sentence-transformers' ``prompts``)."""
        self.default_prompt: str | None = self.prompts.get(
            settings.get("default_prompt_name") or ""
        )
        self.include_prompt = bool(_pooling(path).get("include_prompt", True))
        """Whether a prompt's tokens are pooled with the text's."""
        self._torch = torch
        self._lock = threading.Lock()

    def embed(
        self,
        texts: list[str],
        *,
        normalize: bool = True,
        max_length: int | None = None,
        prompt: str | None = None,
        prompt_name: str | None = None,
    ) -> list[list[float]]:
        """Each text's embedding, after ``prompt`` (or the model's prompt named
        ``prompt_name``, or its default one), as sentence-transformers' ``encode`` gives it."""
        if not texts:
            return []
        if prompt is None and prompt_name is not None:
            if prompt_name not in self.prompts:
                raise invalid_argument(
                    f'the model has no prompt named "{prompt_name}"',
                    hint="Its prompts: " + (", ".join(sorted(self.prompts)) or "none") + ".",
                )
            prompt = self.prompts[prompt_name]
        if prompt is None:
            prompt = self.default_prompt
        torch = self._torch
        limit = max_length or min(self.tokenizer.model_max_length, 512)
        with self._lock, torch.inference_mode():
            tokens = self.tokenizer(
                [t if prompt is None else prompt + t for t in texts],
                padding=True,
                truncation=True,
                max_length=limit,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            if prompt and not self.include_prompt:  # its tokens (less the last) not pooled
                mask[:, : len(self.tokenizer(prompt)["input_ids"]) - 1] = 0
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            result: list[list[float]] = pooled.float().cpu().tolist()
        return result


def trusted_code(kwargs: dict[str, Any]) -> bool:
    """``trust_remote_code``: the model's own code runs in the proxy, which only
    ``--trust-remote-code`` allows (JSON ``true`` alone asks it)."""
    value = kwargs.get("trust_remote_code", False)
    if not isinstance(value, bool):
        raise invalid_argument("pgml.embed option trust_remote_code must be true or false")
    return value


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    found = json.loads(path.read_text("utf-8"))
    return found if isinstance(found, dict) else {}


def _pooling(path: Path) -> dict[str, Any]:
    """The model's pooling settings (sentence-transformers' ``Pooling`` module)."""
    listed = path / "modules.json"
    modules = json.loads(listed.read_text("utf-8")) if listed.is_file() else []
    for module in modules:
        if str(module.get("type", "")).endswith(".Pooling"):
            return _json(path / str(module.get("path", "")) / "config.json")
    return {}


_OPTIONS = (
    "normalize",
    "normalize_embeddings",
    "max_length",
    "prompt",
    "prompt_name",
    "device",
    "trust_remote_code",
)


def embed_options(kwargs: dict[str, Any], device: str) -> dict[str, Any]:
    """Validate ``pgml.embed``'s kwargs, sentence-transformers' ``encode`` arguments:
    ``normalize`` (or ``normalize_embeddings``), ``max_length``, ``prompt``,
    ``prompt_name``, and ``device``, which must be where the proxy runs its models
    (``trust_remote_code`` is :func:`trusted_code`'s)."""
    if "instruction" in kwargs:
        raise PgmlError(
            "0A000",
            "pgml.embed does not take an instruction: INSTRUCTOR models are not served",
            hint='Give the instruction as a prompt: \'{"prompt": "..."}\'.',
        )
    unknown = sorted(set(kwargs) - set(_OPTIONS))
    if unknown:
        raise invalid_argument(
            f'unknown pgml.embed option "{unknown[0]}"',
            hint="Options: " + ", ".join(_OPTIONS) + ".",
        )
    options: dict[str, Any] = {}
    if "normalize" in kwargs and "normalize_embeddings" in kwargs:
        raise invalid_argument("give pgml.embed option normalize or normalize_embeddings, not both")
    for name in ("normalize", "normalize_embeddings"):
        if name in kwargs:
            if not isinstance(kwargs[name], bool):
                raise invalid_argument(f"pgml.embed option {name} must be true or false")
            options["normalize"] = kwargs[name]
    for name in ("prompt", "prompt_name"):
        if name in kwargs:
            if not isinstance(kwargs[name], str):
                raise invalid_argument(f"pgml.embed option {name} must be a string")
            options[name] = kwargs[name]
    if "device" in kwargs:
        wanted = str(kwargs["device"])
        if wanted.split(":")[0] != device.split(":")[0]:
            raise PgmlError(
                "0A000",
                f'pgml.embed cannot run on device "{wanted}": this proxy runs its models on '
                f'"{device}"',
                hint="Leave the device out.",
            )
    if "max_length" in kwargs:
        value = kwargs["max_length"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise invalid_argument("pgml.embed option max_length must be a positive integer")
        options["max_length"] = value
    return options
