"""Which hyperparameters are secrets: passed to training, never stored or shown."""

from __future__ import annotations

from typing import Any

SECRET_KEYS = frozenset({"token", "hub_token"})


def is_secret(key: str) -> bool:
    return key in SECRET_KEYS or key.endswith("_token") or key.endswith("_key")


def without_secrets(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """What may be stored and shown: every key but tokens and keys."""
    return {k: v for k, v in hyperparams.items() if not is_secret(k)}
