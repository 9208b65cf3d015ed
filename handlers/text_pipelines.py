# mypy: disallow-subclassing-any=False
"""The text pipelines that transformers 5 no longer ships, which PostgresML's SQL uses:
``text2text-generation``, ``summarization``, ``translation`` (``translation_xx_to_yy``) and
extractive ``question-answering``.

They are :class:`transformers.Pipeline` subclasses with the inputs, options and result
shapes transformers 4 gave them, so batching, devices and generation defaults are the
library's own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from transformers.pipelines import base

Pipeline: Any = base.Pipeline
"""transformers' pipeline base classes, typed loosely: their methods' signatures are meant
to be narrowed by each task."""
ChunkPipeline: Any = base.ChunkPipeline

TRANSLATION_TASK = re.compile(r"^translation_([a-z]{2,3})_to_([a-z]{2,3})$")
GENERATION_TASKS = ("text2text-generation", "summarization", "translation")
QUESTION_ANSWERING = "question-answering"
TASKS = (*GENERATION_TASKS, QUESTION_ANSWERING)


def base_task(task: str) -> str | None:
    """The pipeline of this module that runs ``task``, or None."""
    if TRANSLATION_TASK.match(task):
        return "translation"
    return task if task in TASKS else None


class Text2TextGenerationPipeline(Pipeline):
    """Sequence-to-sequence generation: ``[{"generated_text": ...}]`` per input."""

    return_name = "generated"
    _pipeline_calls_generate = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, model: Any, tokenizer: Any = None, **kwargs: Any) -> None:
        # T5-style task parameters (a prefix, generation settings) from the model's config
        specific = getattr(model.config, "task_specific_params", None) or {}
        params = dict(specific.get(kwargs.get("task", "")) or {})
        prefix: str | None = params.pop("prefix", None)
        known = model.generation_config.to_dict()
        self._task_generate_kwargs = {k: v for k, v in params.items() if k in known}
        super().__init__(model, tokenizer, **kwargs)
        self.text_prefix: str = prefix or getattr(self, "prefix", None) or ""

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        result = super().__call__(inputs, **kwargs)
        if (
            isinstance(inputs, list)
            and all(isinstance(i, str) for i in inputs)
            and all(len(r) == 1 for r in result)
        ):
            return [r[0] for r in result]
        return result

    def _sanitize_parameters(
        self,
        return_tensors: bool | None = None,
        return_text: bool | None = None,
        clean_up_tokenization_spaces: bool | None = None,
        truncation: bool | str | None = None,
        stop_sequence: str | None = None,
        src_lang: str | None = None,
        tgt_lang: str | None = None,
        **generate_kwargs: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        preprocess: dict[str, Any] = {}
        if truncation is not None:
            preprocess["truncation"] = truncation
        if src_lang is not None:
            preprocess["src_lang"] = src_lang
        if tgt_lang is not None:
            preprocess["tgt_lang"] = tgt_lang
        if stop_sequence is not None:
            generate_kwargs["stop_strings"] = [stop_sequence]
            generate_kwargs["tokenizer"] = self.tokenizer
        postprocess: dict[str, Any] = {}
        if return_tensors is not None:
            postprocess["return_tensors"] = return_tensors
        if return_text is not None:
            postprocess["return_text"] = return_text
        if clean_up_tokenization_spaces is not None:
            postprocess["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        return preprocess, {**self._task_generate_kwargs, **generate_kwargs}, postprocess

    def preprocess(self, inputs: Any, truncation: bool | str = False, **_: Any) -> Any:
        if not isinstance(inputs, str):
            raise ValueError(f"{self.task} takes text inputs, not {type(inputs).__name__}")
        return self.tokenizer(self.text_prefix + inputs, truncation=truncation, return_tensors="pt")

    def _forward(self, model_inputs: Any, **generate_kwargs: Any) -> dict[str, Any]:
        batch = model_inputs["input_ids"].shape[0]
        output_ids = self.model.generate(
            **model_inputs, **self._prepare_generate_kwargs(generate_kwargs)
        )
        if not hasattr(output_ids, "reshape"):  # return_dict_in_generate
            output_ids = output_ids.sequences
        return {"output_ids": output_ids.reshape(batch, -1, *output_ids.shape[1:])}

    def postprocess(
        self,
        model_outputs: dict[str, Any],
        return_tensors: bool = False,
        return_text: bool = True,
        clean_up_tokenization_spaces: bool = False,
    ) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for output_ids in model_outputs["output_ids"][0]:
            record: dict[str, Any] = {}
            if return_tensors:
                record[f"{self.return_name}_token_ids"] = output_ids.tolist()
            if return_text:
                record[f"{self.return_name}_text"] = self.tokenizer.decode(
                    output_ids,
                    skip_special_tokens=True,
                    clean_up_tokenization_spaces=clean_up_tokenization_spaces,
                )
            records.append(record)
        return records


class SummarizationPipeline(Text2TextGenerationPipeline):
    """``[{"summary_text": ...}]`` per input."""

    return_name = "summary"


class TranslationPipeline(Text2TextGenerationPipeline):
    """``[{"translation_text": ...}]`` per input; ``translation_xx_to_yy`` names the
    languages for tokenizers that need them (mBART, NLLB, M2M100)."""

    return_name = "translation"

    def preprocess(
        self,
        inputs: Any,
        truncation: bool | str = False,
        src_lang: str | None = None,
        tgt_lang: str | None = None,
        **_: Any,
    ) -> Any:
        found = TRANSLATION_TASK.match(self.task or "")
        if found is not None:
            src_lang = src_lang or found.group(1)
            tgt_lang = tgt_lang or found.group(2)
        build = getattr(self.tokenizer, "_build_translation_inputs", None)
        if build is not None and src_lang and tgt_lang:
            if not isinstance(inputs, str):
                raise ValueError(f"{self.task} takes text inputs, not {type(inputs).__name__}")
            return build(
                inputs, return_tensors="pt", truncation=truncation, src_lang=src_lang,
                tgt_lang=tgt_lang,
            )  # fmt: skip
        return super().preprocess(inputs, truncation=truncation)


class QuestionAnsweringPipeline(ChunkPipeline):
    """Extractive question answering over ``{"question": ..., "context": ...}`` inputs (or
    their JSON text): ``{"score", "start", "end", "answer"}`` per input, a list of them with
    ``top_k`` > 1.  Long contexts are read in overlapping windows (``doc_stride``)."""

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        if isinstance(inputs, list) and len(inputs) == 1:
            return super().__call__(inputs[0], **kwargs)
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self,
        top_k: int | None = None,
        doc_stride: int | None = None,
        max_answer_len: int | None = None,
        max_seq_len: int | None = None,
        max_question_len: int | None = None,
        handle_impossible_answer: bool | None = None,
        align_to_words: bool | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        preprocess: dict[str, Any] = {}
        for name, value in (
            ("doc_stride", doc_stride),
            ("max_seq_len", max_seq_len),
            ("max_question_len", max_question_len),
        ):
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"{name} must be a positive integer, got {value!r}")
                preprocess[name] = value
        postprocess: dict[str, Any] = {}
        for name, value in (("top_k", top_k), ("max_answer_len", max_answer_len)):
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"{name} must be a positive integer, got {value!r}")
                postprocess[name] = value
        if handle_impossible_answer is not None:
            postprocess["handle_impossible_answer"] = bool(handle_impossible_answer)
        if align_to_words is not None:
            postprocess["align_to_words"] = bool(align_to_words)
        return preprocess, {}, postprocess

    def preprocess(
        self,
        inputs: Any,
        doc_stride: int | None = None,
        max_seq_len: int | None = None,
        max_question_len: int = 64,
    ) -> Iterator[dict[str, Any]]:
        question, context = _question_and_context(inputs)
        limit = max_seq_len or min(self.tokenizer.model_max_length, 384)
        stride = doc_stride if doc_stride is not None else min(limit // 2, 128)
        question_first = self.tokenizer.padding_side == "right"
        encoded = self.tokenizer(
            question if question_first else context,
            context if question_first else question,
            truncation="only_second" if question_first else "only_first",
            max_length=limit,
            stride=min(stride, max(limit - max_question_len - 3, 0)),
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        spans = encoded["input_ids"].shape[0]
        context_id = 1 if question_first else 0
        for i in range(spans):
            features = {
                k: encoded[k][i : i + 1]
                for k in ("input_ids", "attention_mask", "token_type_ids")
                if k in encoded and k in self.tokenizer.model_input_names
            }
            yield {
                **features,
                "offsets": encoded["offset_mapping"][i].tolist(),
                "context_mask": [s == context_id for s in encoded.sequence_ids(i)],
                "context": context,
                "is_last": i == spans - 1,
            }

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        names = self.tokenizer.model_input_names
        features = {k: model_inputs[k] for k in names if k in model_inputs}
        output = self.model(**features)
        rest = {k: v for k, v in model_inputs.items() if k not in features}
        return {"start": output.start_logits, "end": output.end_logits, **rest}

    def postprocess(
        self,
        model_outputs: list[dict[str, Any]],
        top_k: int = 1,
        handle_impossible_answer: bool = False,
        max_answer_len: int = 15,
        align_to_words: bool = True,
    ) -> Any:
        import torch

        answers: list[dict[str, Any]] = []
        null_score = 1.0
        context = model_outputs[0]["context"]
        for output in model_outputs:
            length = output["start"].shape[-1]
            flags = output["context_mask"][:length]
            mask = torch.tensor(flags + [False] * (length - len(flags)))
            start = output["start"][0].float()
            end = output["end"][0].float()
            undesired = ~mask
            if handle_impossible_answer:
                undesired[0] = False
            start = torch.softmax(start.masked_fill(undesired, -10000.0), dim=-1)
            end = torch.softmax(end.masked_fill(undesired, -10000.0), dim=-1)
            null_score = min(null_score, float(start[0] * end[0]))
            start[0] = end[0] = 0.0  # CLS is the null answer, scored apart
            scores = torch.triu(torch.outer(start, end)).tril(max_answer_len - 1)
            flat = scores.flatten()
            best = torch.topk(flat, min(top_k, flat.numel())).indices.tolist()
            offsets = output["offsets"]
            for index in best:
                s, e = divmod(index, scores.shape[1])
                if not (mask[s] and mask[e]):
                    continue
                char_start, char_end = offsets[s][0], offsets[e][1]
                if align_to_words:
                    char_start, char_end = _word_bounds(context, char_start, char_end)
                answers.append(
                    {
                        "score": float(flat[index]),
                        "start": char_start,
                        "end": char_end,
                        "answer": context[char_start:char_end],
                    }
                )
        if handle_impossible_answer:
            answers.append({"score": null_score, "start": 0, "end": 0, "answer": ""})
        answers = sorted(answers, key=lambda a: -a["score"])[:top_k]
        if not answers:
            answers = [{"score": 0.0, "start": 0, "end": 0, "answer": ""}]
        return answers[0] if top_k == 1 else answers


def _question_and_context(value: Any) -> tuple[str, str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(
                'question-answering inputs are {"question": ..., "context": ...} objects'
            ) from exc
    if not isinstance(value, dict) or not {"question", "context"} <= set(value):
        raise ValueError('question-answering inputs are {"question": ..., "context": ...} objects')
    question, context = value["question"], value["context"]
    if not isinstance(question, str) or not isinstance(context, str):
        raise ValueError("question and context must be strings")
    if not question.strip() or not context.strip():
        raise ValueError("question and context must not be empty")
    return question, context


def _word_bounds(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen a character span to whole words (tokens may start or end inside one)."""
    while start > 0 and text[start - 1].isalnum() and text[start].isalnum():
        start -= 1
    while end < len(text) and end > 0 and text[end - 1].isalnum() and text[end].isalnum():
        end += 1
    return start, end


PIPELINE_CLASSES: dict[str, type] = {
    "text2text-generation": Text2TextGenerationPipeline,
    "summarization": SummarizationPipeline,
    "translation": TranslationPipeline,
    QUESTION_ANSWERING: QuestionAnsweringPipeline,
}
