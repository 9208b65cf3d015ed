"""A fitted model's file, in skops' format: written only when every type in it is one the
proxy trusts, and read back trusting those types alone (nothing is unpickled), so that a
file put into ``pgml.files`` by hand cannot make the proxy run code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from handlers.errors import PgmlError

TRUSTED_MODULES = ("sklearn.", "numpy.", "scipy.")


def _untrusted(path: Path) -> tuple[list[str], list[str]]:
    """The types skops does not trust by default in the file, and those of them the proxy
    does not trust either."""
    import skops.io

    found: list[str] = skops.io.get_untrusted_types(file=path)
    return found, [t for t in found if not t.startswith(TRUSTED_MODULES)]


def save(model: Any, path: Path, algorithm: str) -> None:
    """Write ``model``; 0A000 when it holds a type that could not be read back."""
    import skops.io

    try:
        skops.io.dump(model, path)
    except skops.io.exceptions.UnsupportedTypeException as exc:
        refused = [str(exc)]
    else:
        refused = _untrusted(path)[1]
    if refused:
        raise PgmlError(
            "0A000",
            f"models of algorithm {algorithm} cannot be stored safely yet",
            detail="Not stored: " + ", ".join(refused) + ".",
            hint="Choose another algorithm.",
        )


def load(path: Path) -> Any:
    """The model in ``path``; XX001 when the file holds a type the proxy does not trust."""
    import skops.io

    found, refused = _untrusted(path)
    if refused:
        raise PgmlError(
            "XX001",
            f"the model file {path.parent.name}/{path.name} holds types the proxy does not load",
            detail="Untrusted: " + ", ".join(refused) + ".",
        )
    return skops.io.load(path, trusted=found)
