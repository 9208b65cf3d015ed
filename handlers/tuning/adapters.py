"""Parameter-efficient tuning: ``hyperparams.lora_config`` as a PEFT ``LoraConfig`` whose
task type follows the project's task, with a default ``target_modules`` per architecture,
and the checks of the bitsandbytes quantisation of the frozen base model (QLoRA).

The checks run in the proxy before anything is recorded; :func:`lora_config` runs in the
training worker.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

from handlers.artifact import model_class
from handlers.errors import invalid_argument, unsupported
from handlers.tuning.options import TuneOptions, check_field_types

TASK_TYPES = {
    "text-classification": "SEQ_CLS",
    "translation": "SEQ_2_SEQ_LM",
    "summarization": "SEQ_2_SEQ_LM",
    "text-generation": "CAUSAL_LM",
}
CHOSEN_BY_PROXY = frozenset(
    {
        "task_type",
        "peft_type",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "auto_mapping",
        "peft_version",
    }
)
"""LoraConfig fields pgml-proxy sets itself."""
TARGET_MODULES: dict[str, list[str]] = {
    "marian": ["q_proj", "v_proj"],
    "distilbert": ["q_lin", "v_lin"],
    "mpnet": ["q", "v"],
}
"""Attention projections to adapt for architectures that PEFT's own mapping lacks; any
other architecture without a mapping gets every linear layer (PEFT's ``all-linear``)."""


def lora_config_names() -> frozenset[str]:
    from peft import LoraConfig

    return frozenset(f.name for f in dataclasses.fields(LoraConfig) if f.init)


def check_adapter_options(options: TuneOptions, model_path: Path, device: str) -> None:
    """Refuse a bad ``lora_config`` or a quantisation this machine cannot do (blocks:
    imports PEFT and builds the model's skeleton without weights)."""
    if options.quantization is not None:
        key = "load_in_" + options.quantization
        if not device.startswith("cuda"):
            raise unsupported(
                f"{key} needs a CUDA GPU: bitsandbytes quantises the base model on CUDA, and "
                f"this proxy trains on {device}",
                hint=f"Leave out {key} to train the LoRA adapter on an unquantised base model.",
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise unsupported(
                f"{key} needs the bitsandbytes package",
                hint="Install it where the proxy runs: pip install bitsandbytes.",
            )
    if options.lora is None:
        return
    lora = options.lora
    names = lora_config_names()
    unknown = sorted(k for k in lora if k not in names)
    if unknown:
        raise invalid_argument(
            f'unknown lora_config key "{unknown[0]}"',
            detail="lora_config takes the keys of PEFT LoraConfig: "
            + ", ".join(sorted(names - CHOSEN_BY_PROXY))
            + ".",
        )
    chosen = sorted(k for k in lora if k in CHOSEN_BY_PROXY)
    if chosen:
        raise invalid_argument(
            f'lora_config key "{chosen[0]}" is chosen by pgml-proxy',
            hint="Leave it out: the task type follows the project's task, and the base model "
            "is model_name.",
        )
    from peft import LoraConfig

    check_field_types(LoraConfig, lora, "lora_config key")
    _check_ranges(lora)
    _check_on_skeleton(options, model_path)


def _check_ranges(lora: dict[str, Any]) -> None:
    """What ``LoraConfig`` itself leaves to fail later, in training."""
    if "r" in lora and lora["r"] < 1:
        raise invalid_argument(f"lora_config r must be at least 1, not {lora['r']}")
    if "lora_alpha" in lora and lora["lora_alpha"] <= 0:
        raise invalid_argument(f"lora_config lora_alpha must be positive, not {lora['lora_alpha']}")
    if "lora_dropout" in lora and not 0 <= lora["lora_dropout"] < 1:
        raise invalid_argument(
            f"lora_config lora_dropout must be at least 0 and below 1, not {lora['lora_dropout']}"
        )


def _check_on_skeleton(options: TuneOptions, model_path: Path) -> None:
    """Put the adapter on the model built without weights: unknown ``target_modules``,
    and any other value PEFT refuses, fail here rather than in training."""
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    if options.task == "text-classification":
        config.num_labels = 2
    with torch.device("meta"):
        model = model_class(options.task).from_config(config)
    _check_target_modules(options.lora or {}, model, str(model_path.name))
    structure = (options.lora or {}) | {"init_lora_weights": False}  # no weights to start from
    try:
        get_peft_model(model, lora_config(options.task, structure, model, set()))
    except (TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise invalid_argument(f"bad lora_config: {first}") from exc


def _check_target_modules(lora: dict[str, Any], model: Any, name: str) -> None:
    """Named ``target_modules`` must be modules of the model (PEFT matches a name against
    the end of a module's full name)."""
    targets = lora.get("target_modules")
    if not isinstance(targets, list):
        return  # a regular expression, "all-linear", or the default
    names = [n for n, _ in model.named_modules() if n]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        import torch

        linear = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"
            }
        )
        raise invalid_argument(
            f'lora_config target_modules "{missing[0]}" is not a module of {name}',
            hint="Its linear layers: " + ", ".join(linear[:30]) + ".",
        )


def lora_config(task: str, lora: dict[str, Any], model: Any, new_modules: set[str]) -> Any:
    """The ``LoraConfig`` for ``model``: the user's keys over pgml-proxy's defaults.

    ``new_modules`` are the top-level modules the checkpoint did not have (a new
    classification head): they are trained whole and saved with the adapter.
    """
    from peft import LoraConfig
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    settings = dict(lora)
    architecture = getattr(model.config, "model_type", "")
    if "target_modules" not in settings:
        settings["target_modules"] = (
            TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(architecture)
            or TARGET_MODULES.get(architecture)
            or "all-linear"
        )
        if settings["target_modules"] == "all-linear" and new_modules:
            settings.setdefault("exclude_modules", sorted(new_modules))
    if new_modules and "modules_to_save" not in settings:
        settings["modules_to_save"] = sorted(new_modules)
    return LoraConfig(task_type=TASK_TYPES[task], **settings)


def new_modules(missing_keys: set[str] | list[str]) -> set[str]:
    """The modules whose parameters ``from_pretrained`` reported missing (freshly
    initialised), by their full names."""
    return {key.rsplit(".", 1)[0] for key in missing_keys if "." in key}


def count_parameters(model: Any) -> tuple[int, int]:
    """Trainable and total parameters (PEFT counts 4-bit packed weights right)."""
    counter = getattr(model, "get_nb_trainable_parameters", None)
    if callable(counter):
        trainable, total = counter()
        return int(trainable), int(total)
    parameters = list(model.parameters())
    return (
        sum(p.numel() for p in parameters if p.requires_grad),
        sum(p.numel() for p in parameters),
    )
