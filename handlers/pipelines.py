"""Hugging Face pipelines for ``pgml.transform``: what a task names, loading one, and
running it over a batch of inputs or streaming one input's generated text.

A task is a pipeline task name (``'text-classification'``, ``'translation_en_to_es'``) or a
JSON object of ``transformers.pipeline`` arguments (``{"task": ..., "model": ...,
"device_map": "auto"}``), as in PostgresML.  ``conversational`` (PostgresML's chat task)
runs a text-generation pipeline over message lists with the model's chat template and
gives each conversation's replies as strings.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers.device import inference_dtype
from handlers.errors import PgmlError, invalid_argument
from handlers.models import adapter_base, unreadable, unreadable_errors

CONVERSATIONAL = "conversational"
GENERATING = frozenset({"text-generation", "text2text-generation", "summarization", "translation"})
"""Pipelines whose output can be streamed as it is generated."""
COLLAPSING = frozenset({"fill-mask", "question-answering", "table-question-answering"})
"""Pipelines that give a list of one input the single result, not a list of one."""
REMOVED_DEFAULTS = {
    "text2text-generation": "google-t5/t5-base",
    "summarization": "sshleifer/distilbart-cnn-12-6",
    "translation": "google-t5/t5-base",
    "question-answering": "distilbert/distilbert-base-cased-distilled-squad",
}
"""Default models of the pipelines transformers 5 removed (as transformers 4 had them)."""
MODEL_OPTIONS = frozenset({"revision", "trust_remote_code", "device_map", "model_kwargs", "token"})
"""Task options that ``from_pretrained`` takes, for the pipelines built here."""
NOT_TEXT = frozenset({"audio", "image", "video", "multimodal"})
MODEL_KEYS = ("config", "tokenizer", "feature_extractor", "image_processor", "processor")
"""Task options that name a model (loaded from its folder as the model is), besides
``model``: each goes through ``--allow-models`` and the caller's file rights."""
CHOSEN_BY_PROXY = frozenset(
    {
        "cache_dir",
        "offload_folder",
        "gguf_file",
        "subfolder",
        "pipeline_class",
        "code_revision",
        "adapter_kwargs",
        "local_files_only",
        "video_processor",
    }
)
"""Options that would name files or code of the server, or load them another way; refused
in the task and in its ``model_kwargs``."""
LOADING_ARGS = frozenset(
    {"custom_generate", "trust_remote_code", "assistant_model", "assistant_tokenizer"}
)
"""Call arguments of ``generate`` that load code or another model (a repository's
``custom_generate/generate.py``, given ``trust_remote_code``)."""


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A parsed ``task`` argument: the task, its model and the other pipeline arguments."""

    task: str
    pipeline_task: str
    model: str
    options: dict[str, Any]

    @property
    def key(self) -> str:
        return json.dumps(
            {"task": self.task, "model": self.model, **self.options}, sort_keys=True, default=str
        )

    @property
    def remote_code(self) -> bool:
        return self.options.get("trust_remote_code") is True

    def model_names(self) -> list[str]:
        """Every model name the pipeline loads from: the model, its config, tokenizer and
        processors when given."""
        return [self.model, *(self.options[k] for k in MODEL_KEYS if k in self.options)]

    @property
    def streams(self) -> bool:
        return self.pipeline_task in GENERATING or self.task == CONVERSATIONAL


def task_spec(value: Any) -> TaskSpec:
    """The task of a ``pgml.transform`` call (text or a JSON object)."""
    if isinstance(value, str):
        options: dict[str, Any] = {"task": value}
    elif isinstance(value, dict):
        options = dict(value)
    else:
        raise invalid_argument(
            "task must be a task name or a JSON object of pipeline arguments",
            hint="""For example 'text-classification' or '{"task": "text-classification"}'.""",
        )
    task = options.pop("task", None)
    if not isinstance(task, str) or not task.strip():
        raise invalid_argument(
            'a JSON task needs "task": the pipeline task name',
            hint="""For example '{"task": "text-classification", "model": "..."}'::jsonb.""",
        )
    pipeline_task = _pipeline_task(task.strip())
    model = options.pop("model", None)
    if model is None:
        model = _default_model(pipeline_task, task)
    if not isinstance(model, str) or not model:
        raise invalid_argument('"model" must be a model name')
    for name in MODEL_KEYS:
        if name in options and (not isinstance(options[name], str) or not options[name]):
            raise invalid_argument(f'"{name}" must be a model name')
    _check_loading_options(options)
    return TaskSpec(task.strip(), pipeline_task, model, options)


def _check_loading_options(options: dict[str, Any]) -> None:
    """``trust_remote_code`` is JSON true or false; no option names other files or code."""
    remote = options.get("trust_remote_code", False)
    if not isinstance(remote, bool):
        raise invalid_argument(
            f'"trust_remote_code" must be true or false, not {json.dumps(remote)[:40]}'
        )
    nested = options.get("model_kwargs") or {}
    if not isinstance(nested, dict):
        raise invalid_argument('"model_kwargs" must be a JSON object')
    if "trust_remote_code" in nested:
        raise invalid_argument(
            '"trust_remote_code" goes in the task, not in "model_kwargs"',
            hint="""'{"task": ..., "model": ..., "trust_remote_code": true}'""",
        )
    chosen = sorted(CHOSEN_BY_PROXY & (options.keys() | nested.keys()))
    if chosen:
        raise invalid_argument(
            f'pgml.transform may not set "{chosen[0]}": pgml-proxy chooses where models are '
            "read from",
            hint="Name the model (a hub id, a name in --models-dir, or a path) instead.",
        )


def _pipeline_task(task: str) -> str:
    """The pipeline that runs ``task`` (an alias or ``translation_xx_to_yy`` resolved)."""
    from handlers.text_pipelines import base_task

    if task == CONVERSATIONAL:
        return "text-generation"
    removed = base_task(task)
    if removed is not None:
        return removed
    from transformers.pipelines import PIPELINE_REGISTRY, TASK_ALIASES

    name = TASK_ALIASES.get(task, task)
    supported = PIPELINE_REGISTRY.supported_tasks
    if name not in supported:
        known = sorted(
            {t for t, v in supported.items() if v.get("type") not in NOT_TEXT}
            | set(REMOVED_DEFAULTS)
            | {CONVERSATIONAL, "translation_xx_to_yy", *TASK_ALIASES}
        )
        if task.lstrip().startswith("{"):
            raise invalid_argument(
                f'unknown pgml.transform task "{task}"',
                hint="A JSON object of pipeline arguments goes as jsonb: '{...}'::jsonb.",
            )
        raise invalid_argument(
            f'unknown pgml.transform task "{task}"', hint="Text tasks: " + ", ".join(known) + "."
        )
    if supported[name].get("type") in NOT_TEXT:
        raise PgmlError(
            "0A000",
            f'pgml.transform runs text tasks; "{task}" takes {supported[name]["type"]} inputs',
        )
    return name


def _default_model(pipeline_task: str, task: str) -> str:
    if pipeline_task in REMOVED_DEFAULTS:
        return REMOVED_DEFAULTS[pipeline_task]
    from transformers.pipelines import PIPELINE_REGISTRY
    from transformers.pipelines.base import get_default_model_and_revision

    targeted = PIPELINE_REGISTRY.supported_tasks[pipeline_task]
    model, _ = get_default_model_and_revision(targeted, None)
    return str(model)


def transform_args(value: Any) -> dict[str, Any]:
    """``args``: a JSON object of call arguments."""
    parsed = json.loads(value) if isinstance(value, str) else value
    if not isinstance(parsed, dict):
        raise invalid_argument(
            "args must be a JSON object of pipeline call arguments",
            hint="""For example '{"max_new_tokens": 20}'.""",
        )
    loading = sorted(LOADING_ARGS & parsed.keys())
    if loading:
        raise invalid_argument(
            f'pgml.transform args may not set "{loading[0]}": call arguments load no code '
            "or models",
            hint="Models and trust_remote_code go in the task.",
        )
    return parsed


class LoadedPipeline:
    """One loaded pipeline, shared by every session; one batch at a time on its model."""

    def __init__(self, spec: TaskSpec, folder: Path, device: str, folders: dict[str, Path]) -> None:
        """``folders``: where the task's other model names (``MODEL_KEYS``) were found."""
        import transformers

        transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self.spec = spec
        self.base_model = adapter_base(folder)
        """The base model an adapter's folder names (checked on every call)."""
        self.pipe = _build(spec, folder, device, folders)
        self.model = self.pipe.model
        tokenizer_object = self.pipe.tokenizer
        if tokenizer_object is not None:
            if tokenizer_object.pad_token is None:
                tokenizer_object.pad_token = (
                    tokenizer_object.eos_token or tokenizer_object.unk_token
                )
            if spec.pipeline_task == "text-generation":
                tokenizer_object.padding_side = "left"  # generation continues the prompt's end
        self._lock = threading.Lock()

    def run(
        self, items: list[Any], args: dict[str, Any], batch_size: int, stops: Any = None
    ) -> list[Any]:
        """One output per item, as the pipeline gives it for each; a generation ends
        when ``stops`` (transformers' stopping criteria) say so."""
        options = self._options(args)
        size = options.pop("batch_size", min(len(items), batch_size))
        if stops is not None:
            options["stopping_criteria"] = stops
        with self._lock:
            try:
                outputs = self.pipe(items, batch_size=size, **options)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                raise _call_error(self.spec, exc) from exc
        if len(items) == 1 and self.spec.pipeline_task in COLLAPSING:
            outputs = [outputs]
        if self.spec.task == CONVERSATIONAL:
            outputs = [[g["generated_text"] for g in replies] for replies in outputs]
        return [plain(o) for o in outputs]

    def stream(
        self, item: Any, args: dict[str, Any], emit: Callable[[str], None], stops: Any
    ) -> None:
        """Generate for one input, handing ``emit`` the text as it is decoded, until done
        or ``stops`` (transformers' stopping criteria) say so."""
        from transformers import TextStreamer

        spec = self.spec
        options = self._options(args)
        options.pop("batch_size", None)
        prompt_too = (
            spec.pipeline_task == "text-generation"
            and spec.task != CONVERSATIONAL
            and not isinstance(item, list)
            and options.get("return_full_text", True)
        )

        class Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    emit(text)

        streamer = Streamer(
            self.pipe.tokenizer, skip_prompt=not prompt_too, skip_special_tokens=True
        )
        with self._lock:
            try:
                self.pipe(item, streamer=streamer, stopping_criteria=stops, **options)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                raise _call_error(self.spec, exc) from exc

    def _options(self, args: dict[str, Any]) -> dict[str, Any]:
        options = dict(args)
        tokenizer = self.pipe.tokenizer
        if "eos_token" in options and tokenizer is not None:  # PostgresML's spelling
            options["eos_token_id"] = tokenizer.convert_tokens_to_ids(options.pop("eos_token"))
        if self.spec.task == CONVERSATIONAL:
            options.setdefault("return_full_text", False)
        if self.spec.pipeline_task == "zero-shot-classification":
            labels = options.get("candidate_labels")
            if isinstance(labels, str):
                labels = [labels]
            if (
                not isinstance(labels, list)
                or not labels
                or not all(isinstance(x, str) and x for x in labels)
            ):
                raise invalid_argument(
                    "zero-shot-classification needs candidate_labels: a list of labels",
                    hint="""args => '{"candidate_labels": ["positive", "negative"]}'""",
                )
        return options


def _build(spec: TaskSpec, folder: Path, device: str, folders: dict[str, Path]) -> Any:
    import torch
    import transformers

    from handlers.text_pipelines import PIPELINE_CLASSES

    options = dict(spec.options) | {key: str(path) for key, path in folders.items()}
    tokenizer = options.pop("tokenizer", None)
    dtype = options.pop("dtype", options.pop("torch_dtype", None))
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise invalid_argument(f"unknown dtype {spec.options.get('dtype')!r}")
    if dtype is None:
        dtype = inference_dtype(device)
    placed = "device_map" in options or "device" in options
    where = {} if placed else {"device": device}
    cls: Any = PIPELINE_CLASSES.get(spec.pipeline_task)
    build: Any = transformers.pipeline
    try:
        if cls is None:
            return build(
                spec.pipeline_task,
                model=str(folder),
                tokenizer=str(tokenizer or folder),
                dtype=dtype,
                **where,
                **options,
            )
        from transformers import AutoModelForQuestionAnswering, AutoModelForSeq2SeqLM, AutoTokenizer

        loader: Any = (
            AutoModelForQuestionAnswering
            if spec.pipeline_task == "question-answering"
            else AutoModelForSeq2SeqLM
        )
        model_options = {k: v for k, v in options.items() if k in MODEL_OPTIONS}
        extra = dict(model_options.pop("model_kwargs", None) or {})
        if "config" in options:
            extra["config"] = options["config"]
        model = loader.from_pretrained(folder, dtype=dtype, **model_options, **extra)
        tokenizer_object = AutoTokenizer.from_pretrained(
            tokenizer or folder, trust_remote_code=options.get("trust_remote_code", False)
        )
        pipeline_options = {
            k: v
            for k, v in options.items()
            if (k not in MODEL_OPTIONS or k == "device") and k != "config"
        }
        if "device_map" in options:
            pipeline_options.pop("device", None)
        return cls(
            model=model, tokenizer=tokenizer_object, task=spec.task, **where, **pipeline_options
        )
    except unreadable_errors() as exc:
        names = {folder: spec.model} | {path: spec.options[key] for key, path in folders.items()}
        raise unreadable(
            f'cannot load a {spec.task} pipeline from model "{spec.model}"', exc, names
        ) from exc


def _call_error(spec: TaskSpec, exc: Exception) -> PgmlError:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return invalid_argument(
        f"pgml.transform {spec.task}: {message}",
        hint="args are the pipeline's call arguments; inputs the texts it takes.",
    )


def plain(value: Any) -> Any:
    """A pipeline's output as JSON values (numpy and torch numbers become floats)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, str | bool | int | float) or value is None:
        return value
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return plain(tolist())
    item = getattr(value, "item", None)
    if callable(item):
        return plain(item())
    return str(value)
