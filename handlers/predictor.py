"""A deployed model loaded for serving: classification, sequence-to-sequence or causal
generation.

A fully tuned (or merged) model is loaded from its own folder.  An adapter goes on top of
its base model, which is loaded once per proxy (through ``Services.cached``) and shared by
every project tuned from it: each project's adapter is loaded into the one base model,
and each batch switches to its own.  Methods block (run them in a worker thread); one lock
per loaded model (per shared base) keeps the tokenizer and the device to one batch at a
time.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from pathlib import Path
from typing import Any

from handlers.artifact import (
    SEQ2SEQ_TASKS,
    Manifest,
    fingerprint,
    label_value,
    model_class,
    quantization_config,
)
from handlers.device import inference_dtype
from handlers.errors import PgmlError, invalid_argument
from handlers.files import FileRights

log = logging.getLogger("pgml_proxy.serving")

DEFAULT_NEW_TOKENS = 64
"""Tokens ``generate`` adds to a text-generation prompt unless the config says otherwise."""
PIPELINE_OPTIONS = frozenset({"return_full_text"})


async def load_predictor(services: Any, folder: Path, name: str, rights: FileRights) -> Predictor:
    """The model in ``folder`` ready to serve; an adapter goes on its shared base model,
    found as if the caller had named it: ``--allow-models`` and the caller's ``rights``
    decide (the name was only checked for whoever tuned it, and the manifest is a row of
    the catalog that its project's owners may write)."""
    from handlers.classic.predict import ClassicPredictor, is_classic

    if is_classic(folder):
        classic: ClassicPredictor = await services.run(ClassicPredictor, folder)
        return classic  # type: ignore[return-value]
    manifest: Manifest = await services.run(Manifest.read, folder)
    device = services.device
    if not manifest.is_adapter:
        whole: Predictor = await services.run(Predictor.load, folder, manifest, device)
        return whole
    if not manifest.base_model:
        raise PgmlError("22023", f"the adapter of {name} names no base model")
    path = await services.resolve_model(manifest.base_model, rights=rights)
    key = ("base", str(path), manifest.task, len(manifest.labels), manifest.quantization)

    async def load_base() -> SharedBase:
        base: SharedBase = await services.run(SharedBase, path, manifest, device)
        log.info("loaded base model %s on %s", manifest.base_model, device)
        return base

    base: SharedBase = await services.cached(key, load_base)
    adapted: Predictor = await services.run(base.predictor, folder, manifest, name)
    return adapted


def _tokenizer(path: Path, task: str) -> Any:
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    tokenizer = AutoTokenizer.from_pretrained(path)
    if task not in SEQ2SEQ_TASKS and task != "text-classification":
        tokenizer.padding_side = "left"  # generation continues the prompt's end
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def _model_options(manifest: Manifest, device: str) -> dict[str, Any]:
    """``from_pretrained`` options: the label count, and the training's quantisation
    where this device can do it."""
    options: dict[str, Any] = {"dtype": inference_dtype(device)}
    if manifest.task == "text-classification":
        options |= {"num_labels": len(manifest.labels), "ignore_mismatched_sizes": True}
    if manifest.quantization is not None and device.startswith("cuda"):
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is not None:
            options["quantization_config"] = quantization_config(manifest.quantization)
            options["device_map"] = {"": device}
    return options


class SharedBase:
    """A base model loaded once, carrying the adapters of every project tuned from it."""

    def __init__(self, path: Path, manifest: Manifest, device: str) -> None:
        options = _model_options(manifest, device)
        self.model: Any = model_class(manifest.task).from_pretrained(path, **options)
        if "device_map" not in options:
            self.model = self.model.to(device)
        self.model.eval()
        self.tokenizer = _tokenizer(path, manifest.task)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.fingerprint = fingerprint(path)
        self.device = device
        self.lock = threading.RLock()
        self.peft: Any = None
        """The base wrapped by PEFT once its first adapter is loaded."""
        self._retired: list[str] = []

    def predictor(self, folder: Path, manifest: Manifest, name: str) -> Predictor:
        """The adapter in ``folder`` loaded as ``name`` (blocks)."""
        from peft import PeftModel

        if manifest.base_fingerprint and manifest.base_fingerprint != self.fingerprint:
            raise PgmlError(
                "55000",
                f'the base model "{manifest.base_model}" found here is not the one this '
                "adapter was trained on",
                detail=f"Trained on {manifest.base_fingerprint}; found {self.fingerprint}.",
                hint="Serve it with the same base model files, or tune the project again.",
            )
        with self.lock:
            while name in self._retired:  # served again (a rollback) before it was unloaded
                self._retired.remove(name)
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
            elif name not in self.peft.peft_config:
                self.peft.load_adapter(str(folder), adapter_name=name)
            self.peft.eval()
            self._unload_retired()
        predictor = Predictor(manifest, self.tokenizer, self.peft, self.device, self.lock, name)
        weakref.finalize(predictor, self._retired.append, name)
        return predictor

    def _unload_retired(self) -> None:
        """Unload the adapters no predictor serves any more (redeployed projects' old
        ones); called with the lock held."""
        while self._retired:
            name = self._retired.pop()
            if name in self.peft.peft_config and len(self.peft.peft_config) > 1:
                self.peft.delete_adapter(name)
                log.info("unloaded adapter %s", name)


class Predictor:
    def __init__(
        self,
        manifest: Manifest,
        tokenizer: Any,
        model: Any,
        device: str,
        lock: threading.Lock | threading.RLock,
        adapter: str | None = None,
    ) -> None:
        import torch

        self.task = manifest.task
        self.labels = manifest.labels
        self.label_type = manifest.label_type
        self.max_input_length = manifest.max_input_length
        self.max_target_length = manifest.max_target_length
        self.tokenizer = tokenizer
        self.model = model
        self.device = device
        self.adapter = adapter
        self.base_model = manifest.base_model if adapter is not None else None
        """The base model an adapter is served on: every caller's rights over it are
        checked, loaded or not."""
        self._lock = lock
        self._torch = torch

    def memory_bytes(self) -> int | None:
        """An adapter's own weights (its base model is counted once, as its own entry of
        the model cache); None for a whole model (all of its tensors count)."""
        if self.adapter is None:
            return None
        marker = f".{self.adapter}."
        return sum(
            int(tensor.numel() * tensor.element_size())
            for name, tensor in self.model.named_parameters()
            if marker in name
        )

    @classmethod
    def load(cls, folder: Path, manifest: Manifest, device: str) -> Predictor:
        """A whole model from its folder (blocks)."""
        options = _model_options(manifest, device)
        for key in ("num_labels", "ignore_mismatched_sizes"):
            options.pop(key, None)  # the saved model has its labels
        model = model_class(manifest.task).from_pretrained(folder, **options)
        if "device_map" not in options:
            model = model.to(device)
        tokenizer = _tokenizer(folder, manifest.task)
        return cls(manifest, tokenizer, model.eval(), device, threading.Lock())

    @property
    def generates_text(self) -> bool:
        return self.task != "text-classification"

    def _activate(self) -> None:
        if self.adapter is not None and self.model.active_adapter != self.adapter:
            self.model.set_adapter(self.adapter)

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
            self._activate()
            logits = self.model(**self._encode(texts)).logits
            found: list[list[float]] = torch.softmax(logits.float(), dim=-1).cpu().tolist()
        return found

    def predict(self, texts: list[str], stops: Any = None) -> list[Any]:
        """Labels for a classifier (REAL or TEXT as the label column was), else text
        (generated until ``stops``, transformers' stopping criteria, say so)."""
        if self.generates_text:
            return self.generate(texts, {}, stops)
        return [
            label_value(self.labels[max(range(len(p)), key=p.__getitem__)], self.label_type)
            for p in self.probabilities(texts)
        ]

    def generate(self, texts: list[str], config: dict[str, Any], stops: Any = None) -> list[str]:
        torch = self._torch
        options = {k: v for k, v in config.items() if k not in PIPELINE_OPTIONS}
        if stops is not None:
            options["stopping_criteria"] = stops
        full_text = bool(config.get("return_full_text", True))
        if "max_new_tokens" not in options and "max_length" not in options:
            options["max_new_tokens"] = (
                self.max_target_length if self.task in SEQ2SEQ_TASKS else DEFAULT_NEW_TOKENS
            )
        options.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        with self._lock, torch.inference_mode():
            self._activate()
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
