"""``pgml.chunk``: a text split by one of the splitters PostgresML offers, which are
LangChain's text splitters (the ``langchain-text-splitters`` package), built with the
call's ``kwargs`` as their keyword arguments. Chunks are numbered from 1, as PostgresML
numbers them."""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from typing import Any

from handlers.errors import PgmlError, invalid_argument
from handlers.signatures import Args, CallContext

SPLITTERS = {
    "character": ("langchain_text_splitters", "CharacterTextSplitter"),
    "latex": ("langchain_text_splitters", "LatexTextSplitter"),
    "markdown": ("langchain_text_splitters", "MarkdownTextSplitter"),
    "nltk": ("langchain_text_splitters.nltk", "NLTKTextSplitter"),
    "python": ("langchain_text_splitters", "PythonCodeTextSplitter"),
    "recursive_character": ("langchain_text_splitters", "RecursiveCharacterTextSplitter"),
    "spacy": ("langchain_text_splitters.spacy", "SpacyTextSplitter"),
}
"""PostgresML's splitter names, and the class of each: (module, name)."""


def splitter_class(name: str) -> Any:
    """The splitter class PostgresML calls ``name``."""
    found = SPLITTERS.get(name)
    if found is None:
        raise invalid_argument(
            f'unknown splitter "{name}"', hint="Splitters: " + ", ".join(sorted(SPLITTERS)) + "."
        )
    module, attribute = found
    return getattr(importlib.import_module(module), attribute)


def split(name: str, text: str, kwargs: dict[str, Any]) -> list[str]:
    """``text`` split by the splitter ``name`` made with ``kwargs`` (blocking work)."""
    cls = splitter_class(name)
    try:
        splitter = cls(**kwargs)
        return list(splitter.split_text(text))
    except ImportError as exc:  # a package the splitter needs (spacy)
        raise PgmlError(
            "0A000",
            f'splitter "{name}" needs a Python package that is not installed: {exc.name or exc}',
            hint="Install it in the proxy's environment, or use another splitter.",
        ) from exc
    except LookupError as exc:  # NLTK's data
        raise PgmlError(
            "58P01",
            f'splitter "{name}" needs NLTK data that is missing on the proxy\'s machine',
            detail=_first_line(exc),
            hint="Download it where the proxy runs: python -m nltk.downloader punkt_tab.",
        ) from exc
    except OSError as exc:  # spaCy's pipeline
        raise PgmlError(
            "58P01",
            f'splitter "{name}" needs a spaCy pipeline that is missing on the proxy\'s machine',
            detail=_first_line(exc),
            hint="Install it where the proxy runs: python -m spacy download en_core_web_sm.",
        ) from exc
    except (TypeError, ValueError) as exc:
        raise invalid_argument(f'splitter "{name}": {_first_line(exc)}') from exc


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip("* ")]
    return lines[0] if lines else type(exc).__name__


def _options(kwargs: Any) -> dict[str, Any]:
    parsed = json.loads(kwargs) if isinstance(kwargs, str) else kwargs
    if not isinstance(parsed, dict):
        raise invalid_argument("kwargs must be a JSON object", hint="""'{"chunk_size": 500}'""")
    return parsed


async def chunk(ctx: CallContext, batch: Sequence[Args]) -> list[Any]:
    results: list[Any] = []
    for name, text, kwargs in batch:
        chunks = await ctx.services.run(split, name, text, _options(kwargs))
        results.append([(index, part) for index, part in enumerate(chunks, start=1)])
        ctx.check_cancel()
    return results
