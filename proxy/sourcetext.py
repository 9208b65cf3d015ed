"""The client's statement text with the pgml calls spliced out, the rest kept verbatim.

Only the text of each call is replaced; every other character of the statement reaches
PostgreSQL as the client wrote it, so PostgreSQL parses the user's own SQL (function
names, casts, column names and types stay its own).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import Token, TokenType

Span = tuple[int, int]
"""``[start, end)`` character offsets into the statement."""

_OPEN = {TokenType.L_PAREN, TokenType.L_BRACKET}
_CLOSE = {TokenType.R_PAREN, TokenType.R_BRACKET}


@dataclass
class SourceText:
    text: str
    edits: list[tuple[int, int, str]] = field(default_factory=list)

    def replace(self, span: Span, replacement: str) -> None:
        self.edits.append((span[0], span[1], replacement))

    def render(self, span: Span | None = None) -> str:
        """The text of ``span`` (the whole statement by default) with the edits inside it."""
        start, end = span or (0, len(self.text))
        inside = sorted(
            (e for e in self.edits if start <= e[0] and e[1] <= end),
            key=lambda e: (e[0], -e[1]),
        )
        out: list[str] = []
        position = start
        for edit_start, edit_end, replacement in inside:
            if edit_start < position:  # nested in an edit already applied
                continue
            out.append(self.text[position:edit_start])
            out.append(replacement)
            position = edit_end
        out.append(self.text[position:end])
        return "".join(out)


@dataclass(frozen=True)
class CallText:
    span: Span
    """From ``pgml`` to the closing parenthesis."""
    arguments: list[Span]
    """Each argument's value (after ``name =>`` for named ones)."""


def call_text(tokens: list[Token], start: int) -> CallText:
    """Locate a call ``pgml.name(...)`` whose first token starts at ``start``."""
    index = next(i for i, t in enumerate(tokens) if t.start >= start)
    while tokens[index].token_type != TokenType.L_PAREN:
        index += 1
    depth = 0
    arguments: list[Span] = []
    current: list[Token] = []
    for token in tokens[index:]:
        kind = token.token_type
        if kind in _OPEN:
            depth += 1
            if depth == 1:
                continue
        elif kind in _CLOSE:
            depth -= 1
            if depth == 0:
                if current:
                    arguments.append(_value_span(current))
                return CallText((tokens[_first(tokens, start)].start, token.end + 1), arguments)
        elif kind == TokenType.COMMA and depth == 1:
            arguments.append(_value_span(current))
            current = []
            continue
        current.append(token)
    raise ValueError("unbalanced parentheses in a pgml call")


def _first(tokens: list[Token], start: int) -> int:
    return next(i for i, t in enumerate(tokens) if t.start >= start)


def _value_span(tokens: list[Token]) -> Span:
    for index, token in enumerate(tokens[:-1]):
        if token.text == "=>" or (token.text == "=" and tokens[index + 1].text == ">"):
            skip = 1 if token.text == "=>" else 2
            tokens = tokens[index + skip :]
            break
    return tokens[0].start, tokens[-1].end + 1
