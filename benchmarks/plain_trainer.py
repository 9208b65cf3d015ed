"""The reference for ``pgml.tune``'s training speed: Hugging Face ``Trainer`` in a plain script.

Fine-tunes a sequence classifier (whole, or a PEFT LoRA adapter with ``--lora-config``)
on the rows of a JSON Lines file (``text``, ``label``) the way a user would by hand, with
the settings ``pgml.tune`` uses for text-classification: the same seeded random split,
tokenisation (truncation to the tokenizer's length, padding per batch), training arguments
and evaluation before and after training; then saves the model.  Prints one JSON line of
figures on stdout.

    .venv/bin/python benchmarks/plain_trainer.py --rows rows.jsonl --model PATH \\
        --hyperparams '{"num_train_epochs": 1}' --test-size 0.2 --device cpu

``tune_serve.py train-speed`` and ``tune_lora.py lora-vs-plain`` run it as a subprocess,
so that it starts fresh as the proxy's training worker does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STARTED = time.monotonic()


def split(
    rows: list[dict[str, Any]], test_size: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Random test rows as ``pgml.tune`` draws them: shuffle the row numbers with the
    seed, the first ``test_size`` of them are the test split; both keep the rows' order."""
    count = round(len(rows) * test_size) if test_size < 1 else int(test_size)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    chosen = set(order[:count])
    train = [r for i, r in enumerate(rows) if i not in chosen]
    test = [r for i, r in enumerate(rows) if i in chosen]
    return train, test


def digest(rows: list[dict[str, Any]]) -> str:
    """A fingerprint of a split, so the caller can check it is the one it expects."""
    text = "\n".join(f"{r['text']}\t{r['label']}" for r in rows)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=Path, required=True, help="JSON Lines: text, label")
    parser.add_argument("--model", required=True, help="folder of the pretrained model")
    parser.add_argument("--hyperparams", default="{}", help="TrainingArguments as JSON")
    parser.add_argument("--test-size", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--output-dir", type=Path, default=None)
    parser.add_argument(
        "--lora-config",
        default=None,
        help="PEFT LoraConfig keys as JSON: train a LoRA adapter instead of the whole model",
    )
    args = parser.parse_args()

    import numpy as np
    import torch
    import transformers
    from datasets import Dataset
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    rows = [json.loads(line) for line in args.rows.read_text("utf-8").splitlines() if line]
    train_rows, test_rows = split(rows, args.test_size, args.seed)
    labels = sorted({int(r["label"]) for r in rows})
    label_ids = {label: i for i, label in enumerate(labels)}

    transformers.set_seed(args.seed)
    loading = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model,
        num_labels=len(labels),
        id2label={i: str(label) for i, label in enumerate(labels)},
        label2id={str(label): i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )
    if args.lora_config is not None:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(task_type="SEQ_CLS", **json.loads(args.lora_config))
        )
    load_seconds = time.monotonic() - loading
    length = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 1024)

    def dataset(part: list[dict[str, Any]]) -> Any:
        data = Dataset.from_dict(
            {"text": [r["text"] for r in part], "label": [label_ids[int(r["label"])] for r in part]}
        )
        return data.map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=length),
            batched=True,
            remove_columns=["text"],
        )

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        predicted = np.asarray(logits).argmax(axis=1)
        truth = prediction.label_ids
        return {
            "f1": float(f1_score(truth, predicted, average="macro")),
            "accuracy": float(accuracy_score(truth, predicted)),
        }

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    output = args.output_dir or Path(tempfile.mkdtemp(prefix="plain-trainer-"))
    settings: dict[str, Any] = {
        "output_dir": str(output / "checkpoints"),
        "eval_strategy": "epoch",
        "logging_steps": 0.02,
        "save_strategy": "no",
        "report_to": "none",
        "seed": args.seed,
        "disable_tqdm": True,
    }
    if device == "cpu":
        settings["use_cpu"] = True
    settings |= json.loads(args.hyperparams)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=dataset(train_rows),
        eval_dataset=dataset(test_rows),
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    before = trainer.evaluate()
    training = time.monotonic()
    outcome = trainer.train()
    train_seconds = time.monotonic() - training
    after = (
        next(
            (e for e in reversed(trainer.state.log_history) if "eval_f1" in e),
            None,
        )
        or trainer.evaluate()
    )
    trainer.save_model(str(output / "model"))
    tokenizer.save_pretrained(str(output / "model"))
    print(
        json.dumps(
            {
                "train_rows": len(train_rows),
                "test_rows": len(test_rows),
                "train_digest": digest(train_rows),
                "test_digest": digest(test_rows),
                "device": device,
                "load_seconds": load_seconds,
                "train_time": train_seconds,
                "train_samples_per_second": float(outcome.metrics["train_samples_per_second"]),
                "f1_before": float(before["eval_f1"]),
                "f1_after": float(after["eval_f1"]),
                "seconds_in_process": time.monotonic() - STARTED,
            }
        ),
        flush=True,
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
