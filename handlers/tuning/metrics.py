"""Metrics on the test split, from the libraries that define them (scikit-learn,
sacrebleu, rouge-score)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def classification(probabilities: Any, labels: Sequence[int], classes: int) -> dict[str, float]:
    """``f1``, ``precision`` and ``recall`` (macro), ``accuracy``, ``log_loss`` and, for two
    classes, ``roc_auc`` of class probabilities against the true label ids."""
    import numpy as np
    from sklearn import metrics

    probs = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(labels)
    predicted = probs.argmax(axis=1)
    everyone = list(range(classes))
    found = {
        "f1": metrics.f1_score(truth, predicted, average="macro", labels=everyone, zero_division=0),
        "precision": metrics.precision_score(
            truth, predicted, average="macro", labels=everyone, zero_division=0
        ),
        "recall": metrics.recall_score(
            truth, predicted, average="macro", labels=everyone, zero_division=0
        ),
        "accuracy": metrics.accuracy_score(truth, predicted),
        "log_loss": metrics.log_loss(truth, probs, labels=everyone),
    }
    if classes == 2 and len(set(truth.tolist())) == 2:
        found["roc_auc"] = metrics.roc_auc_score(truth, probs[:, 1])
    return {k: float(v) for k, v in found.items()}


def translation(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus ``bleu`` and ``chrf`` (sacrebleu, 0 to 100)."""
    import sacrebleu

    return {
        "bleu": float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score),
        "chrf": float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score),
    }


def summarization(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ``rouge1``, ``rouge2`` and ``rougeL`` F-measures (rouge-score, 0 to 1)."""
    from rouge_score import rouge_scorer

    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    totals = dict.fromkeys(kinds, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)
        for kind in kinds:
            totals[kind] += scores[kind].fmeasure
    count = max(len(predictions), 1)
    return {kind: total / count for kind, total in totals.items()}


def perplexity(eval_loss: float) -> float:
    """exp of the mean token cross-entropy (capped so that JSON can hold it)."""
    return math.exp(min(eval_loss, 700.0))
