"""Fine-tuning one model with Hugging Face ``Trainer``; runs in the worker process.

One :class:`TaskRecipe` per task builds the model, tokenises the rows and computes the
task's metrics.  Everything else (arguments, progress, evaluation before and after,
saving) is shared.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers.tuning import metrics
from handlers.tuning.options import arguments_class

Emit = Callable[..., None]

MANIFEST = "pgml.json"
"""What serving needs besides the Hugging Face files: task, labels, lengths."""


@dataclass(frozen=True, slots=True)
class Job:
    task: str
    model_path: str
    output_dir: str
    train: list[tuple[str, str]]
    test: list[tuple[str, str]]
    training: dict[str, Any]
    labels: list[str]
    label_type: str
    max_length: int | None
    max_input_length: int | None
    max_target_length: int | None
    device: str
    seed: int

    @classmethod
    def read(cls, path: Path) -> Job:
        data = json.loads(path.read_text("utf-8"))
        data["train"] = [tuple(p) for p in data["train"]]
        data["test"] = [tuple(p) for p in data["test"]]
        return cls(**data)


class TaskRecipe:
    """How one task is trained; subclasses fill in the model, data and metrics."""

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

    def model(self) -> Any:
        raise NotImplementedError

    def dataset(self, rows: list[tuple[str, str]]) -> Any:
        raise NotImplementedError

    def tokenized_text(self, data: Any) -> Any:
        """A dataset's ``text`` column replaced by its tokens, cut at the input length."""
        length = self.input_length()
        return data.map(
            lambda b: self.tokenizer(b["text"], truncation=True, max_length=length),
            batched=True,
            remove_columns=["text"],
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
    def model(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        labels = self.job.labels
        model = AutoModelForSequenceClassification.from_pretrained(
            self.job.model_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )
        _ensure_padding(self.tokenizer, model)
        return model

    def dataset(self, rows: list[tuple[str, str]]) -> Any:
        from datasets import Dataset

        ids = {label: i for i, label in enumerate(self.job.labels)}
        data = Dataset.from_dict({"text": [r[0] for r in rows], "label": [ids[r[1]] for r in rows]})
        return self.tokenized_text(data)

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

    def model(self) -> Any:
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM.from_pretrained(self.job.model_path)

    def dataset(self, rows: list[tuple[str, str]]) -> Any:
        from datasets import Dataset

        data = Dataset.from_dict({"x": [r[0] for r in rows], "y": [r[1] for r in rows]})
        source, target = self.input_length(), self.target_length()

        def tokenize(batch: dict[str, list[str]]) -> Any:
            encoded = self.tokenizer(batch["x"], truncation=True, max_length=source)
            encoded["labels"] = self.tokenizer(
                text_target=batch["y"], truncation=True, max_length=target
            )["input_ids"]
            return encoded

        return data.map(tokenize, batched=True, remove_columns=["x", "y"])

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
    def model(self) -> Any:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.job.model_path)
        _ensure_padding(self.tokenizer, model)
        return model

    def dataset(self, rows: list[tuple[str, str]]) -> Any:
        from datasets import Dataset

        eos = self.tokenizer.eos_token or ""
        return self.tokenized_text(Dataset.from_dict({"text": [r[0] + eos for r in rows]}))

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
    """Evaluate the base model, fine-tune it, evaluate again, save it to ``output_dir``."""
    import transformers
    from transformers import TrainerCallback

    transformers.set_seed(job.seed)
    recipe = RECIPES[job.task](job)
    model = recipe.model()
    train_set, test_set = recipe.dataset(job.train), recipe.dataset(job.test)
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
    output = Path(job.output_dir) / "model"
    trainer.save_model(str(output))
    recipe.tokenizer.save_pretrained(str(output))
    (output / MANIFEST).write_text(json.dumps(recipe.manifest()), "utf-8")
    for stray in ("training_args.bin",):
        (output / stray).unlink(missing_ok=True)
    return {"before": before, "after": after, "steps": state.global_step}
