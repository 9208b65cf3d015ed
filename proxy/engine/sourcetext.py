"""The client's statement text with the pgml calls spliced out, the rest kept verbatim.

Only the text of each call is replaced; every other character of the statement reaches
PostgreSQL as the client wrote it, so PostgreSQL parses the user's own SQL (function
names, casts, column names and types stay its own).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterator
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
    first = bisect_left(tokens, start, key=lambda t: t.start)
    index = first
    while tokens[index].token_type != TokenType.L_PAREN:
        index += 1
    depth = 0
    arguments: list[Span] = []
    current: list[Token] = []
    for position in range(index, len(tokens)):
        token = tokens[position]
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
                return CallText((tokens[first].start, token.end + 1), arguments)
        elif kind == TokenType.COMMA and depth == 1:
            arguments.append(_value_span(current))
            current = []
            continue
        current.append(token)
    raise ValueError("unbalanced parentheses in a pgml call")


def words_after(tokens: list[Token], end: int, words: tuple[str, ...]) -> int | None:
    """Where ``words`` end when they are the tokens that follow position ``end``."""
    index = bisect_left(tokens, end, key=lambda t: t.start)
    found = tokens[index : index + len(words)]
    if [t.text.upper() for t in found] != list(words):
        return None
    return found[-1].end + 1


def _value_span(tokens: list[Token]) -> Span:
    for index, token in enumerate(tokens[:-1]):
        if token.text == "=>" or (token.text == "=" and tokens[index + 1].text == ">"):
            skip = 1 if token.text == "=>" else 2
            tokens = tokens[index + skip :]
            break
    return tokens[0].start, tokens[-1].end + 1


_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][\w\x80-\uffff]*)?\$")


def space_parameters(sql: str) -> str:
    """Put a space before each ``$n`` parameter that follows another character.

    PostgreSQL reads ``$1,$2`` as two parameters; the SQL tokenizer used for planning reads
    it as the start of a dollar-quoted string.  Spacing changes nothing for PostgreSQL,
    and literals, quoted identifiers and comments are left exactly as they are.
    """
    return spaced(sql)[0]


def spaced(sql: str) -> tuple[str, list[int]]:
    """:func:`space_parameters`, and where in the original each space went in."""
    inserted: list[int] = []
    out: list[str] = []
    done = 0
    for i, char in _code_marks(sql):
        if char != "$" or i + 1 >= len(sql) or not sql[i + 1].isdigit():
            continue
        previous = sql[i - 1] if i else " "
        if not previous.isspace() and not (previous.isalnum() or previous in "_$"):
            out.append(sql[done:i])
            out.append(" ")
            inserted.append(i)
            done = i
    out.append(sql[done:])
    return "".join(out), inserted


def nesting_depth(sql: str) -> int:
    """How deeply parentheses nest in ``sql`` (outside literals and comments)."""
    depth = deepest = 0
    for _, char in _code_marks(sql):
        if char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
    return deepest


_MARK = re.compile(r"""['"$()]|--|/\*""")


def _code_marks(sql: str) -> Iterator[tuple[int, str]]:
    """Each ``$``, ``(`` and ``)`` that stands in the code, not in a literal, a quoted
    name, a dollar-quoted string or a comment."""
    for start, _, mark in _scan(sql):
        if mark in "$()":
            yield start, mark


def without_literals(sql: str) -> str:
    """``sql`` with each string constant (dollar-quoted too) and comment blanked to one
    space; quoted names and the code stay."""
    out: list[str] = []
    done = 0
    for start, end, mark in _scan(sql):
        if mark in ("'", "--", "/*", "$$"):
            out.append(sql[done:start])
            out.append(" ")
            done = end
    out.append(sql[done:])
    return "".join(out)


def _scan(sql: str) -> Iterator[tuple[int, int, str]]:
    """The statement's marks, each with its span: a code ``$``, ``(`` or ``)``; a string
    constant (``'``), a quoted name (``"``), a dollar-quoted string (``$$``, whatever
    its tag) or a comment (``--``, ``/*``)."""
    i, n = 0, len(sql)
    while (found := _MARK.search(sql, i)) is not None:
        start = found.start()
        mark = found.group()
        if mark == "'" or mark == '"':
            escapes = mark == "'" and _is_escape_string(sql, start)
            i = _closing_quote(sql, start, mark, escapes=escapes)
        elif mark == "--":
            end = sql.find("\n", start)
            i = n if end < 0 else end
        elif mark == "/*":
            i = _closing_comment(sql, start)
        elif mark == "$":
            tag = _DOLLAR_TAG.match(sql, start)
            if tag is not None and not (
                start > 0 and (sql[start - 1].isalnum() or sql[start - 1] == "_")
            ):
                close = sql.find(tag.group(0), tag.end())
                i = n if close < 0 else close + len(tag.group(0))
                mark = "$$"
            else:
                i = start + 1
        else:
            i = start + 1
        yield start, i, mark


def _is_escape_string(sql: str, quote: int) -> bool:
    return quote > 0 and sql[quote - 1] in "eE" and (quote < 2 or not sql[quote - 2].isalnum())


def _closing_quote(sql: str, start: int, quote: str, escapes: bool) -> int:
    """Just past the quote that closes the literal or name opened at ``start`` (doubled
    quotes, and in E'' strings backslashes, escape one)."""
    i = start + 1
    n = len(sql)
    while True:
        end = sql.find(quote, i)
        if escapes:
            slash = sql.find("\\", i)
            if 0 <= slash < end or (end < 0 <= slash):
                i = slash + 2
                continue
        if end < 0:
            return n
        if end + 1 < n and sql[end + 1] == quote:
            i = end + 2
            continue
        return end + 1


_COMMENT_MARK = re.compile(r"/\*|\*/")


def _closing_comment(sql: str, start: int) -> int:
    """Just past the ``*/`` that closes the comment opened at ``start`` (they nest)."""
    depth, i = 0, start
    while (found := _COMMENT_MARK.search(sql, i)) is not None:
        i = found.end()
        depth += 1 if found.group() == "/*" else -1
        if depth == 0:
            return i
    return len(sql)
