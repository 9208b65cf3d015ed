"""Fine-tuning one model with Hugging Face ``Trainer``; runs in the worker process (one
per rank when several train data-parallel).

One :class:`TaskRecipe` per task builds the model, tokenises the rows and computes the
task's metrics.  Everything else (the split, arguments, a LoRA adapter, progress,
evaluation before and after, saving) is shared.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers.artifact import (
    ADAPTER,
    FULL,
    Manifest,
    fingerprint,
    hub_revision,
    model_class,
    quantization_config,
)
from handlers.tuning import metrics
from handlers.tuning.adapters import count_parameters, lora_config, new_modules
from handlers.tuning.options import arguments_class
from handlers.tuning.snapshot import INPUT, TARGET
from handlers.tuning.split import split_rows

Emit = Callable[..., None]

STRAY_FILES = ("training_args.bin",)
"""Files ``save_model`` writes that serving does not need."""
ADAPTER_FILES_PREFIX = "adapter_"
"""PEFT's files of an adapter (``adapter_config.json``, ``adapter_model.safetensors``)."""


@dataclass(frozen=True, slots=True)
class Job:
    task: str
    model_name: str
    model_path: str
    output_dir: str
    data_file: str
    """The snapshot: an Arrow file of text columns ``x`` (not for text-generation), ``y``."""
    rows: int
    test_size: float
    sampling: str
    seed: int
    training: dict[str, Any]
    labels: list[str]
    label_type: str
    max_length: int | None
    max_input_length: int | None
    max_target_length: int | None
    device: str
    lora: dict[str, Any] | None = None
    quantization: str | None = None
    merge_adapter: bool = False

    @classmethod
    def read(cls, path: Path) -> Job:
        return cls(**json.loads(path.read_text("utf-8")))


class TaskRecipe:
    """How one task is trained; subclasses fill in the data and metrics."""

    trainer_class_name = "Trainer"

    def __init__(self, job: Job) -> None:
        from transformers import AutoTokenizer

        self.job = job
        self.tokenizer = AutoTokenizer.from_pretrained(job.model_path)

    def input_length(self) -> int:
        limit = min(int(getattr(self.tokenizer, "model_max_length", 512) or 512), 1024)
        return self.job.max_input_length or self.job.max_length or limit

    def target_length(self) -> int:
        return self.job.max_target_length or self.job.max_length or 128

    def model_options(self) -> dict[str, Any]:
        return {}

    def model(self, quantized: bool = True) -> tuple[Any, set[str]]:
        """The model to tune (its base quantised for QLoRA unless ``quantized`` is off) and
        the modules the checkpoint did not have."""
        options = self.model_options()
        if quantized and self.job.quantization is not None:
            import torch

            options |= {
                "quantization_config": quantization_config(self.job.quantization),
                "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))},
                "dtype": torch.bfloat16,
            }
        model, info = model_class(self.job.task).from_pretrained(
            self.job.model_path, output_loading_info=True, **options
        )
        _ensure_padding(self.tokenizer, model)
        return model, new_modules(info.get("missing_keys", ()))

    def tokenize(self, batch: dict[str, list[Any]]) -> Any:
        raise NotImplementedError

    def dataset(self, data: Any, cache: Path) -> Any:
        """The snapshot rows ``data`` tokenised into ``cache`` (memory-mapped, like them)."""
        return data.map(
            self.tokenize,
            batched=True,
            remove_columns=data.column_names,
            cache_file_name=str(cache),
            desc=f"tokenizing {cache.stem}",
        )

    def collator(self, model: Any) -> Any:
        raise NotImplementedError

    def extra_arguments(self) -> dict[str, Any]:
        return {}

    def compute_metrics(self, prediction: Any) -> dict[str, float]:
        return {}

    def finish_metrics(self, found: dict[str, float]) -> dict[str, float]:
        return found

    def manifest(self) -> dict[str, Any]:
        return {
            "task": self.job.task,
            "max_input_length": self.input_length(),
            "max_target_length": self.target_length(),
        }


class Classification(TaskRecipe):
    def model_options(self) -> dict[str, Any]:
        labels = self.job.labels
        return {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
            "ignore_mismatched_sizes": True,
        }

    def extra_arguments(self) -> dict[str, Any]:
        # One label a sequence: averaging "tokens" across processes would scale the mean
        # loss (and the gradients) by the number of processes.
        return {"average_tokens_across_devices": False}

    def tokenize(self, batch: dict[str, list[Any]]) -> Any:
        ids = {label: i for i, label in enumerate(self.job.labels)}
        encoded = self.tokenizer(batch[INPUT], truncation=True, max_length=self.input_length())
        encoded["label"] = [ids[y] for y in batch[TARGET]]
        return encoded

    def collator(self, model: Any) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(self.tokenizer)

    def compute_metrics(self, prediction: Any) -> dict[str, float]:
        import torch

        logits = (
            prediction.predictions[0]
            if isinstance(prediction.predictions, tuple)
            else (prediction.predictions)
        )
        probabilities = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=-1)
        return metrics.classification(
            probabilities.numpy(), prediction.label_ids.tolist(), len(self.job.labels)
        )

    def manifest(self) -> dict[str, Any]:
        return super().manifest() | {"labels": self.job.labels, "label_type": self.job.label_type}


class Seq2Seq(TaskRecipe):
    trainer_class_name = "Seq2SeqTrainer"

    def tokenize(self, batch: dict[str, list[Any]]) -> Any:
        encoded = self.tokenizer(batch[INPUT], truncation=True, max_length=self.input_length())
        encoded["labels"] = self.tokenizer(
            text_target=batch[TARGET], truncation=True, max_length=self.target_length()
        )["input_ids"]
        return encoded

    def collator(self, model: Any) -> Any:
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(self.tokenizer, model=model)

    def extra_arguments(self) -> dict[str, Any]:
        return {"predict_with_generate": True, "generation_max_length": self.target_length()}

    def compute_metrics(self, prediction: Any) -> dict[str, float]:
        import numpy as np

        pad = self.tokenizer.pad_token_id
        generated = (
            prediction.predictions[0]
            if isinstance(prediction.predictions, tuple)
            else (prediction.predictions)
        )
        generated = np.where(generated < 0, pad, generated)
        references = np.where(prediction.label_ids < 0, pad, prediction.label_ids)
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        truth = self.tokenizer.batch_decode(references, skip_special_tokens=True)
        texts = [t.strip() for t in texts]
        truth = [t.strip() for t in truth]
        if self.job.task == "translation":
            return metrics.translation(texts, truth)
        return metrics.summarization(texts, truth)


class Generation(TaskRecipe):
    def tokenize(self, batch: dict[str, list[Any]]) -> Any:
        eos = self.tokenizer.eos_token or ""
        return self.tokenizer(
            [text + eos for text in batch[TARGET]],
            truncation=True,
            max_length=self.input_length(),
        )

    def collator(self, model: Any) -> Any:
        from transformers import DataCollatorForLanguageModeling

        return DataCollatorForLanguageModeling(self.tokenizer, mlm=False)

    def finish_metrics(self, found: dict[str, float]) -> dict[str, float]:
        if "eval_loss" in found:
            found["perplexity"] = metrics.perplexity(found["eval_loss"])
        return found


RECIPES: dict[str, type[TaskRecipe]] = {
    "text-classification": Classification,
    "translation": Seq2Seq,
    "summarization": Seq2Seq,
    "text-generation": Generation,
}


def _ensure_padding(tokenizer: Any, model: Any) -> None:
    """Models like GPT-2 ship without a pad token: pad with end-of-text."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id


NOT_METRICS = frozenset(
    {"runtime", "samples_per_second", "steps_per_second", "model_preparation_time", "epoch", "step"}
)
"""Figures of an evaluation that say how fast or where it ran, not how good the model is."""


def _plain(found: dict[str, Any]) -> dict[str, float]:
    """Numbers only, ``eval_`` prefixes dropped (but ``eval_loss``), ``NOT_METRICS`` left out."""
    plain = {
        (k[5:] if k.startswith("eval_") and k != "eval_loss" else k): float(v)
        for k, v in found.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return {k: v for k, v in plain.items() if k not in NOT_METRICS}


def train(job: Job, emit: Emit) -> dict[str, Any]:
    """Split and tokenise the snapshot, evaluate the base model, fine-tune it (whole, or a
    LoRA adapter on it), evaluate again, save it to ``output_dir``/model."""
    import datasets
    import transformers
    from transformers import TrainerCallback

    datasets.disable_progress_bars()
    transformers.set_seed(job.seed)
    recipe = RECIPES[job.task](job)
    settings: dict[str, Any] = {
        "eval_strategy": "epoch",
        "logging_strategy": "steps",
        "logging_steps": 0.02,
        "save_strategy": "no",
        "report_to": "none",
        "seed": job.seed,
        "disable_tqdm": True,
    }
    settings |= recipe.extra_arguments() | job.training
    settings |= {"output_dir": str(Path(job.output_dir) / "checkpoints")}
    if job.device == "cpu":
        settings["use_cpu"] = True
    arguments = arguments_class(job.task)(**settings)

    train_set, test_set = _split(job, recipe, arguments)
    model, fresh = recipe.model()
    if job.lora is not None:
        model = _with_adapter(job, model, fresh, arguments)
    trainable, total = count_parameters(model)
    emit(event="parameters", trainable=trainable, total=total, method=_method(job))

    last_eval_step = -1
    training = False

    class Progress(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            nonlocal training
            training = True
            emit(event="begin", max_steps=state.max_steps, epochs=args.num_train_epochs)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            nonlocal last_eval_step
            if not training:  # the evaluation before tuning is reported on its own
                return
            record = recipe.finish_metrics(_plain(dict(logs or {})))
            if any(k.startswith("eval_") for k in logs or {}):
                last_eval_step = state.global_step
            position = {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "epoch": round(float(state.epoch or 0), 4),
            }
            emit(event="log", **(record | position))

    trainer_class = getattr(transformers, recipe.trainer_class_name)
    trainer = trainer_class(
        model=model,
        args=arguments,
        train_dataset=train_set,
        eval_dataset=test_set,
        data_collator=recipe.collator(model),
        processing_class=recipe.tokenizer,
        compute_metrics=recipe.compute_metrics if job.task != "text-generation" else None,
        callbacks=[Progress()],
    )
    before = recipe.finish_metrics(_plain(trainer.evaluate(metric_key_prefix="eval")))
    emit(event="before", metrics=before)
    started = time.monotonic()
    outcome = trainer.train()
    seconds = time.monotonic() - started
    state = trainer.state
    after = next(
        (
            recipe.finish_metrics(_plain(entry))
            for entry in reversed(state.log_history)
            if "eval_loss" in entry and entry.get("step") == state.global_step
        ),
        None,
    )
    if after is None or last_eval_step != state.global_step:
        after = recipe.finish_metrics(_plain(trainer.evaluate()))
    after |= {
        "train_time": seconds,
        "train_samples_per_second": float(outcome.metrics.get("train_samples_per_second", 0.0)),
        "train_loss": float(outcome.training_loss),
    }
    manifest = Manifest(
        **recipe.manifest(),
        kind=FULL if job.lora is None or job.merge_adapter else ADAPTER,
        base_model=job.model_name,
        base_revision=hub_revision(Path(job.model_path)),
        base_fingerprint=fingerprint(Path(job.model_path)),
        quantization=job.quantization,
        trainable_parameters=trainable,
        total_parameters=total,
    )
    _save(job, recipe, trainer, manifest)
    return {"before": before, "after": after, "steps": state.global_step}


def _method(job: Job) -> str:
    if job.lora is None:
        return "full"
    return "lora" if job.quantization is None else f"qlora ({job.quantization})"


def _split(job: Job, recipe: TaskRecipe, arguments: Any) -> tuple[Any, Any]:
    """The train and test rows of the snapshot, tokenised (the first process tokenises,
    the others read its files)."""
    from datasets import Dataset

    data = Dataset.from_file(job.data_file)
    labels = None
    if job.sampling == "stratified":
        import pyarrow as pa
        import pyarrow.compute as pc

        column = data.data.column(TARGET)
        labels = pc.index_in(column, value_set=pa.array(job.labels)).to_pylist()
    train_rows, test_rows = split_rows(job.rows, job.test_size, job.sampling, job.seed, labels)
    folder = Path(job.output_dir)
    with arguments.main_process_first(desc="tokenizing"):
        train_set = recipe.dataset(data.select(train_rows), folder / "train.arrow")
        test_set = recipe.dataset(data.select(test_rows), folder / "test.arrow")
    return train_set, test_set


def _with_adapter(job: Job, model: Any, fresh: set[str], arguments: Any) -> Any:
    """``model`` frozen under a LoRA adapter (prepared for k-bit training when quantised)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if job.quantization is not None:
        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model, use_gradient_checkpointing=bool(arguments.gradient_checkpointing)
        )
    config = lora_config(job.task, job.lora or {}, model, fresh)
    config.base_model_name_or_path = job.model_name  # a name, not this machine's path
    config.revision = hub_revision(Path(job.model_path))
    return get_peft_model(model, config)


def _save(job: Job, recipe: TaskRecipe, trainer: Any, manifest: Manifest) -> None:
    """The model (or adapter) with its manifest into ``output_dir``/model.

    Every process calls ``save_model`` (sharded trainings gather their weights there);
    the first process alone writes files."""
    output = Path(job.output_dir) / "model"
    merge = job.lora is not None and job.merge_adapter
    saved = Path(job.output_dir) / "adapter" if merge else output
    trainer.save_model(str(saved))
    if not trainer.is_world_process_zero():
        return
    if merge:
        _merged(recipe, saved).save_pretrained(str(output))
    if job.lora is None or merge:
        recipe.tokenizer.save_pretrained(str(output))
        for stray in STRAY_FILES:
            (output / stray).unlink(missing_ok=True)
    else:  # the adapter alone: the tokenizer and the rest come with the base model
        for path in output.iterdir():
            if not path.name.startswith(ADAPTER_FILES_PREFIX):
                path.unlink()
    manifest.write(output)


def _merged(recipe: TaskRecipe, adapter: Path) -> Any:
    """The saved adapter merged into a fresh, unquantised copy of its base model."""
    from peft import PeftModel

    base, _ = recipe.model(quantized=False)
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
