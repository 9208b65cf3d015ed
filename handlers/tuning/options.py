"""Validating ``pgml.tune``'s arguments before anything is read or trained."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from handlers.artifact import SEQ2SEQ_TASKS, TASKS
from handlers.errors import PgmlError, invalid_argument
from handlers.secrets import without_secrets

SAMPLINGS = ("random", "first", "last", "stratified")
LENGTH_KEYS = frozenset({"max_length", "max_input_length", "max_target_length"})
QUANTIZATIONS = {"load_in_4bit": "4bit", "load_in_8bit": "8bit"}
ADAPTER_KEYS = frozenset({"lora_config", "merge_adapter", *QUANTIZATIONS})
PROXY_KEYS = LENGTH_KEYS | ADAPTER_KEYS
"""Hyperparameters the proxy uses itself (tokenisation lengths, parameter-efficient
tuning); the rest go to ``TrainingArguments``."""
CHOSEN_BY_PROXY = frozenset({"output_dir", "logging_dir", "overwrite_output_dir"})


def normalise_task(task: str) -> str:
    """``_`` and ``-`` are the same; ``translation_xx_to_yy`` is a translation."""
    name = task.strip().lower().replace("_", "-")
    if re.fullmatch(r"translation(-[a-z]{2,3}-to-[a-z]{2,3})?", name):
        return "translation"
    if name not in TASKS:
        raise invalid_argument(
            f'unknown task "{task}"',
            hint="Tasks: " + ", ".join(TASKS) + ".",
        )
    return name


@dataclass(frozen=True, slots=True)
class TuneOptions:
    """Validated hyperparameters: tokenisation lengths, parameter-efficient tuning and
    ``TrainingArguments`` keys."""

    task: str
    training: dict[str, Any] = field(default_factory=dict)
    max_length: int | None = None
    max_input_length: int | None = None
    max_target_length: int | None = None
    lora: dict[str, Any] | None = None
    """``lora_config``: PEFT ``LoraConfig`` keys; None for full fine-tuning."""
    quantization: str | None = None
    """``4bit`` or ``8bit``: the frozen base model quantised with bitsandbytes (QLoRA)."""
    merge_adapter: bool = False

    @property
    def stored(self) -> dict[str, Any]:
        """The hyperparameters as recorded in ``pgml.models`` (no secrets)."""
        lengths = {k: getattr(self, k) for k in sorted(LENGTH_KEYS) if getattr(self, k) is not None}
        adapter: dict[str, Any] = {}
        if self.lora is not None:
            adapter["lora_config"] = without_secrets(self.lora)
        if self.quantization is not None:
            adapter["load_in_" + self.quantization] = True
        if self.merge_adapter:
            adapter["merge_adapter"] = True
        return without_secrets(self.training) | lengths | adapter


def parse_hyperparams(task: str, value: Any, allowed: frozenset[str]) -> TuneOptions:
    """Check ``hyperparams`` against ``allowed`` (the ``TrainingArguments`` fields)."""
    if value is None:
        value = {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise PgmlError(
                "22P02",
                "invalid input syntax for type json",
                detail=f"hyperparams: {exc.msg} at character {exc.pos + 1}.",
            ) from exc
    if not isinstance(value, dict):
        raise invalid_argument(
            "hyperparams must be a JSON object", hint="""For example '{"num_train_epochs": 1}'."""
        )
    unknown = sorted(k for k in value if k not in allowed and k not in PROXY_KEYS)
    if unknown:
        raise invalid_argument(
            f'unknown hyperparameter "{unknown[0]}"',
            detail="hyperparams takes the keys of Hugging Face TrainingArguments"
            + (" (Seq2SeqTrainingArguments)" if task in SEQ2SEQ_TASKS else "")
            + " and "
            + ", ".join(sorted(PROXY_KEYS))
            + ".",
        )
    chosen = sorted(k for k in value if k in CHOSEN_BY_PROXY)
    if chosen:
        raise invalid_argument(
            f'hyperparameter "{chosen[0]}" is chosen by pgml-proxy',
            hint="Leave it out; the trained files are stored in pgml.files.",
        )
    lengths: dict[str, int] = {}
    for key in sorted(LENGTH_KEYS & value.keys()):
        length = value[key]
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise invalid_argument(f"hyperparameter {key} must be a positive integer")
        lengths[key] = length
    training = {k: v for k, v in value.items() if k not in PROXY_KEYS}
    lora, quantization, merge = _adapter_options(value)
    return TuneOptions(
        task,
        training,
        lengths.get("max_length"),
        lengths.get("max_input_length"),
        lengths.get("max_target_length"),
        lora,
        quantization,
        merge,
    )


def _adapter_options(value: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None, bool]:
    """``lora_config``, ``load_in_4bit`` / ``load_in_8bit`` and ``merge_adapter``."""
    for key in sorted((ADAPTER_KEYS - {"lora_config"}) & value.keys()):
        if not isinstance(value[key], bool):
            raise invalid_argument(
                f'hyperparameter "{key}" must be a boolean, not {json.dumps(value[key])[:40]}'
            )
    lora = value.get("lora_config")
    if lora is not None and not isinstance(lora, dict):
        raise invalid_argument(
            "hyperparameter lora_config must be a JSON object of PEFT LoraConfig keys",
            hint="""For example '{"lora_config": {"r": 8, "lora_alpha": 16}}'.""",
        )
    chosen = [q for key, q in QUANTIZATIONS.items() if value.get(key)]
    if len(chosen) > 1:
        raise invalid_argument("load_in_4bit and load_in_8bit exclude each other")
    needs_lora = [k for k in sorted(ADAPTER_KEYS - {"lora_config"}) if value.get(k)]
    if needs_lora and lora is None:
        raise invalid_argument(
            f"hyperparameter {needs_lora[0]} needs lora_config",
            hint="The base model stays frozen and a LoRA adapter is trained on top: "
            """add "lora_config": {} (PEFT's defaults) or your LoraConfig keys.""",
        )
    return (
        None if lora is None else dict(lora),
        chosen[0] if chosen else None,
        bool(value.get("merge_adapter", False)),
    )


def parse_test_size(value: Any) -> float:
    """A fraction in (0, 1) or a row count of at least 1."""
    try:
        size = float(value)
    except (TypeError, ValueError) as exc:
        raise invalid_argument("test_size must be a number") from exc
    if math.isnan(size) or size <= 0 or (size >= 1 and not size.is_integer()):
        raise invalid_argument(
            f"test_size must be a fraction between 0 and 1 or a whole number of rows, not {value}"
        )
    return size


def parse_sampling(value: Any, task: str) -> str:
    sampling = str(value or "random").strip().lower()
    if sampling not in SAMPLINGS:
        raise invalid_argument(
            f'unknown test_sampling "{value}"', hint="Use " + ", ".join(SAMPLINGS) + "."
        )
    if sampling == "stratified" and task != "text-classification":
        raise invalid_argument("test_sampling stratified needs a text-classification task")
    return sampling


def arguments_class(task: str) -> type:
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    return Seq2SeqTrainingArguments if task in SEQ2SEQ_TASKS else TrainingArguments


def training_argument_names(task: str) -> frozenset[str]:
    """The fields of the ``TrainingArguments`` class the task trains with."""
    return frozenset(f.name for f in dataclasses.fields(arguments_class(task)) if f.init)


def check_value_types(task: str, training: dict[str, Any]) -> None:
    """Each value's JSON type fits its ``TrainingArguments`` field (which checks little)."""
    check_field_types(arguments_class(task), training, "hyperparameter")


def check_field_types(cls: type, values: dict[str, Any], what: str) -> None:
    """Each value's JSON type fits the type hint of the dataclass field it is for."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        hint = hints.get(key, Any)
        if not _fits(hint, value):
            shown = json.dumps(value)
            raise invalid_argument(f'{what} "{key}" must be {_describe(hint)}, not {shown[:40]}')


def _fits(hint: Any, value: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(arg, value) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return any(_matches(choice, value) for choice in typing.get_args(hint))
    target = origin or hint
    if target is type(None):
        return value is None
    if target is bool:
        return isinstance(value, bool)
    if target is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if target is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(target, type) and issubclass(target, str | enum.Enum):
        return isinstance(value, str)
    if target in (list, tuple):
        return isinstance(value, list)
    if target is dict:
        return isinstance(value, dict)
    return True


def _matches(choice: Any, value: Any) -> bool:
    """A ``Literal`` choice, where ``"name_[number of ...]"`` stands for ``name_<number>``."""
    if isinstance(choice, str) and "[" in choice and isinstance(value, str):
        stem = choice.split("[", 1)[0]
        return value.startswith(stem) and value[len(stem) :].isdigit()
    return bool(choice == value and type(choice) is type(value))


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a) for a in typing.get_args(hint)))
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(json.dumps(a) for a in typing.get_args(hint))
    target = typing.get_origin(hint) or hint
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        list: "a list",
        tuple: "a list",
        dict: "an object",
        type(None): "null",
    }
    if isinstance(target, type) and issubclass(target, str | enum.Enum):
        return "a string"
    return names.get(target, str(hint))
