"""What may be loaded: ``--allow-models`` and ``--trust-remote-code``, as PostgresML's
``pgml.huggingface_whitelist`` and ``pgml.huggingface_trust_remote_code_whitelist``.

A pattern matches a name segment by segment (``/`` separates them): ``*`` and ``?`` never
cross a ``/``, and a wildcard never matches ``.`` or ``..``, so ``tiny/*`` matches
``tiny/bert`` but neither ``tiny/a/b`` nor ``tiny/../../etc``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from handlers.errors import PgmlError


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    """Glob patterns of model names: which may be loaded (none given: any), and which may
    run code from their repository (none given: no model)."""

    allow: tuple[str, ...] = ()
    trust_remote_code: tuple[str, ...] = ()

    @classmethod
    def from_patterns(cls, allow: Sequence[str], trust: Sequence[str]) -> ModelPolicy:
        return cls(tuple(p for p in allow if p), tuple(p for p in trust if p))

    def check(self, name: str, *, remote_code: bool = False) -> None:
        """Refuse (42501) a model the settings do not allow."""
        if self.allow and not any(matches(name, p) for p in self.allow):
            raise PgmlError(
                "42501",
                f'model "{name}" is not allowed by --allow-models',
                detail="Allowed: " + ", ".join(self.allow) + ".",
                hint="Add a pattern that matches it to --allow-models (PGML_PROXY_ALLOW_MODELS).",
            )
        if remote_code and not any(matches(name, p) for p in self.trust_remote_code):
            raise PgmlError(
                "42501",
                f'model "{name}" may not run remote code: trust_remote_code is refused by '
                "--trust-remote-code",
                detail="Trusted: "
                + (", ".join(self.trust_remote_code) if self.trust_remote_code else "none")
                + ".",
                hint="Add a pattern that matches it to --trust-remote-code "
                "(PGML_PROXY_TRUST_REMOTE_CODE), or leave trust_remote_code out.",
            )


def matches(name: str, pattern: str) -> bool:
    """Whether ``name`` matches the glob ``pattern``, one ``/``-separated segment against
    one; a ``.`` or ``..`` segment only matches itself, written out."""
    names, patterns = name.split("/"), pattern.split("/")
    return len(names) == len(patterns) and all(
        segment == wanted if segment in (".", "..") else fnmatchcase(segment, wanted)
        for segment, wanted in zip(names, patterns, strict=True)
    )
