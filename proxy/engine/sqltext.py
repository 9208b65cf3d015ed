"""Where the parts of a statement stand in its text, found from its tokens.

The engine rewrites the client's SQL by splicing text, never by re-rendering it, so it
needs the exact character span of each clause, select-list item, column reference and
subquery it replaces.  sqlglot's tree says what the parts are; its tokens (which know
strings, quoted names, comments and dollar quotes) say where they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import Token, TokenType, exp

Span = tuple[int, int]
"""``[start, end)`` character offsets into the statement."""

_OPEN = frozenset({TokenType.L_PAREN, TokenType.L_BRACKET})
_CLOSE = frozenset({TokenType.R_PAREN, TokenType.R_BRACKET})

_SELECT_CLAUSES = {
    TokenType.FROM: "from",
    TokenType.INTO: "into",
    TokenType.WHERE: "where",
    TokenType.GROUP_BY: "group",
    TokenType.HAVING: "having",
    TokenType.WINDOW: "window",
    TokenType.ORDER_BY: "order",
    TokenType.LIMIT: "limit",
    TokenType.OFFSET: "offset",
    TokenType.FETCH: "fetch",
    TokenType.FOR: "locking",
}
_STATEMENT_STARTS = frozenset(
    {
        TokenType.SELECT,
        TokenType.INSERT,
        TokenType.UPDATE,
        TokenType.DELETE,
        TokenType.MERGE,
        TokenType.VALUES,
    }
)
_SET_OPERATIONS = frozenset({TokenType.UNION, TokenType.INTERSECT, TokenType.EXCEPT})
_BRANCH_ENDS = frozenset({TokenType.ORDER_BY, TokenType.LIMIT, TokenType.OFFSET, TokenType.FETCH})
"""After a set operation these belong to the whole operation, not to its last branch."""


class SqlText:
    """A statement's text and tokens, with paren matching."""

    def __init__(self, text: str, tokens: list[Token]) -> None:
        self.text = text
        self.tokens = tokens
        self.by_start = {t.start: i for i, t in enumerate(tokens)}
        self.by_end = {t.end: i for i, t in enumerate(tokens)}
        self.match = [-1] * len(tokens)
        """For each paren or bracket token, the index of its partner."""
        self.enclosing = [-1] * len(tokens)
        """For each token, the index of the innermost open paren around it."""
        stack: list[int] = []
        for i, token in enumerate(tokens):
            kind = token.token_type
            if kind in _CLOSE:
                if stack:
                    opened = stack.pop()
                    self.match[opened], self.match[i] = i, opened
                self.enclosing[i] = stack[-1] if stack else -1
                continue
            self.enclosing[i] = stack[-1] if stack else -1
            if kind in _OPEN:
                stack.append(i)

    def kind(self, i: int) -> TokenType | None:
        return self.tokens[i].token_type if 0 <= i < len(self.tokens) else None

    def word(self, i: int) -> str:
        return self.tokens[i].text.upper() if 0 <= i < len(self.tokens) else ""

    def chars(self, first: int, last: int) -> Span:
        """The character span of tokens ``first`` to ``last`` (inclusive)."""
        return self.tokens[first].start, self.tokens[last].end + 1

    def source(self, first: int, last: int) -> str:
        start, end = self.chars(first, last)
        return self.text[start:end]

    # --- expressions ---------------------------------------------------------------------

    def meta_range(self, node: exp.Expr) -> tuple[int, int] | None:
        """Token indices of the first and last token that carries part of ``node``."""
        first = last = -1
        for sub in node.walk():
            meta = sub.meta
            if not meta or "start" not in meta:
                continue
            i = self.by_start.get(meta["start"])
            j = self.by_end.get(meta["end"], i)
            if i is None or j is None:
                continue
            first = i if first < 0 else min(first, i)
            last = j if last < 0 else max(last, j)
        return None if first < 0 else (first, last)

    def span(self, node: exp.Expr) -> Span:
        """The character span of an expression the engine exports or replaces: a column
        reference, a function call (with FILTER, WITHIN GROUP and OVER), or an expression
        made around a subquery (scalar, EXISTS, IN, ANY/ALL, ARRAY)."""
        first, last = self.token_range(node)
        return self.chars(first, last)

    def token_range(self, node: exp.Expr) -> tuple[int, int]:
        select = subquery_of(node)
        if select is not None:
            return self._around_subquery(node, select)
        found = self.meta_range(node)
        if found is None:
            raise ValueError(f"no position for {node.sql()}")
        first, last = self._balanced(*found)
        if isinstance(node, exp.Func) and self.kind(last + 1) == TokenType.L_PAREN:
            last = self.match[last + 1]  # a call without arguments: name()
        return first, self._suffixes(last)

    def item_range(self, node: exp.Expr) -> tuple[int, int]:
        """Token indices of a FROM item as written: its parentheses and alias included."""
        found = self.meta_range(node)
        if found is None:
            raise ValueError(f"no position for {node.sql()}")
        return self._balanced(*found)

    def _balanced(self, first: int, last: int) -> tuple[int, int]:
        """Widen a token range until its parens pair up."""
        i = first
        while i <= last:
            partner = self.match[i]
            if partner >= 0:
                first, last = min(first, partner), max(last, partner)
            i += 1
        return first, last

    def _suffixes(self, last: int) -> int:
        """Past FILTER (...), WITHIN GROUP (...) and OVER (...) / OVER name after a call."""
        while True:
            word = self.word(last + 1)
            if word == "FILTER" and self.kind(last + 2) == TokenType.L_PAREN:
                last = self.match[last + 2]
            elif word == "WITHIN" and self.word(last + 2) == "GROUP":
                last = self.match[last + 3]
            elif word == "OVER":
                last = (
                    self.match[last + 2] if self.kind(last + 2) == TokenType.L_PAREN else last + 2
                )
            else:
                return last

    def _around_subquery(self, node: exp.Expr, select: exp.Select) -> tuple[int, int]:
        start = self.select_start(select)
        opened = self.enclosing[start]
        if opened < 0:
            raise ValueError("a subquery without parentheses")
        first, last = opened, self.match[opened]
        if isinstance(node, exp.In):
            left = self.meta_range(node.this)
            if left is not None:
                first = min(first, self._balanced(*left)[0])
        elif self.word(first - 1) in ("EXISTS", "ARRAY", "ANY", "ALL", "SOME"):
            first -= 1
        return first, last

    # --- queries -------------------------------------------------------------------------

    def select_start(self, select: exp.Select) -> int:
        """The token index of a SELECT's own keyword."""
        starts = [i for i in map(self._first_token, select.expressions) if i is not None]
        if not starts:
            raise ValueError("a select list without positions")
        i = min(starts) - 1
        depth = 0
        while i >= 0:
            kind = self.tokens[i].token_type
            if kind in _CLOSE:
                depth += 1
            elif kind in _OPEN:
                depth -= 1
            elif kind == TokenType.SELECT and depth <= 0:
                return i
            i -= 1
        raise ValueError("no SELECT keyword")

    def _first_token(self, node: exp.Expr) -> int | None:
        """The first token of an expression, a query inside it counted from its opening
        paren (its own tokens would lead :meth:`select_start` to its SELECT)."""
        first: int | None = None
        for sub in node.walk(prune=lambda n: isinstance(n, exp.Select)):
            if isinstance(sub, exp.Select):
                found: int | None = self.enclosing[self.select_start(sub)]
            else:
                meta = sub.meta
                found = self.by_start.get(meta["start"]) if meta and "start" in meta else None
            if found is not None and found >= 0:
                first = found if first is None else min(first, found)
        return first

    def select_layout(self, select: exp.Select) -> SelectLayout:
        """The clauses and select-list items of one SELECT, as token ranges."""
        keyword = self.select_start(select)
        layout = SelectLayout(start=keyword, keyword=keyword)
        if select.args.get("with_") is not None:
            layout.start = self._with_start(keyword)
            layout.clauses["with"] = (layout.start, keyword - 1)
        branch = isinstance(select.parent, exp.SetOperation)
        i = keyword + 1
        if self.kind(i) == TokenType.DISTINCT:
            i += 1
            if self.kind(i) == TokenType.ON:
                i = self.match[i + 1] + 1
        elif self.kind(i) == TokenType.ALL:
            i += 1
        item_start = i
        current = "items"
        clause_start = i
        depth = 0
        n = len(self.tokens)
        while i < n:
            kind = self.tokens[i].token_type
            if kind in _OPEN:
                depth += 1
            elif kind in _CLOSE:
                depth -= 1
                if depth < 0:
                    break
            elif depth == 0:
                if kind == TokenType.SEMICOLON or kind in _SET_OPERATIONS or self._ends(i):
                    break
                if branch and kind in _BRANCH_ENDS:
                    break
                name = _SELECT_CLAUSES.get(kind)
                if name is not None and name == current == "locking":
                    pass  # FOR UPDATE OF a FOR SHARE OF b: one locking clause
                elif name is not None and not self._inside_expression(i, kind):
                    layout.clauses[current] = (clause_start, i - 1)
                    current, clause_start = name, i
                elif current == "items" and kind == TokenType.COMMA:
                    layout.items.append((item_start, i - 1))
                    item_start = i + 1
            i += 1
        layout.end = i - 1
        layout.clauses[current] = (clause_start, i - 1)
        items_end = layout.clauses["items"][1]
        layout.items.append((item_start, items_end))
        if len(layout.items) != len(select.expressions):
            raise ValueError("the select list did not split into its items")
        return layout

    def _ends(self, i: int) -> bool:
        """Whether the statement around the query goes on at token ``i``: INSERT's
        RETURNING or ON CONFLICT, CREATE TABLE AS's WITH [NO] DATA."""
        kind = self.kind(i)
        after = self.tokens[i + 1].text.upper() if i + 1 < len(self.tokens) else ""
        return (
            kind == TokenType.RETURNING
            or (kind == TokenType.ON and after == "CONFLICT")
            or (kind == TokenType.WITH and after in ("NO", "DATA"))
        )

    def _inside_expression(self, i: int, kind: TokenType) -> bool:
        """A clause keyword that is part of an expression: ``IS [NOT] DISTINCT FROM``."""
        return kind == TokenType.FROM and self.kind(i - 1) == TokenType.DISTINCT

    def _with_start(self, keyword: int) -> int:
        return self.keyword_before(keyword, "WITH")

    def keyword_before(self, index: int, word: str) -> int:
        """The nearest token before ``index`` outside parentheses spelled ``word``."""
        i = index - 1
        depth = 0
        while i >= 0:
            kind = self.tokens[i].token_type
            if kind in _CLOSE:
                depth += 1
            elif kind in _OPEN:
                depth -= 1
            elif depth == 0 and self.tokens[i].text.upper() == word:
                return i
            i -= 1
        raise ValueError(f"no {word} keyword")

    def statement_end(self, start: int) -> int:
        """The last token of the statement (or parenthesised query) that starts at
        ``start``: before an unmatched ``)``, a ``;`` or the end."""
        depth = 0
        i = start
        n = len(self.tokens)
        while i < n:
            kind = self.tokens[i].token_type
            if kind in _OPEN:
                depth += 1
            elif kind in _CLOSE:
                depth -= 1
                if depth < 0:
                    break
            elif depth == 0 and kind == TokenType.SEMICOLON:
                break
            i += 1
        return i - 1

    def with_query(self, cte: exp.CTE) -> tuple[int, int]:
        """The first and last token of one WITH query as written: from its name to the
        comma or statement after it."""
        found = self.meta_range(cte.args["alias"])
        assert found is not None
        return found[0], self.list_item_end(found[0])

    def list_item_end(self, first: int) -> int:
        """The last token of a list item (a WITH query) that starts at ``first``: before
        a comma or the first token of a statement outside parentheses, or the end."""
        depth = 0
        last = first
        while last + 1 < len(self.tokens):
            kind = self.tokens[last + 1].token_type
            if depth == 0 and (kind == TokenType.COMMA or kind in _STATEMENT_STARTS):
                break
            depth += (kind in _OPEN) - (kind in _CLOSE)
            last += 1
        return last

    def keyword_at_depth0(self, first: int, last: int, words: tuple[str, ...]) -> int:
        """The first token in ``first..last`` outside parentheses spelled as one of
        ``words``, or -1."""
        depth = 0
        for i in range(first, last + 1):
            kind = self.tokens[i].token_type
            if kind in _OPEN:
                depth += 1
            elif kind in _CLOSE:
                depth -= 1
            elif depth == 0 and self.tokens[i].text.upper() in words:
                return i
        return -1

    def conjuncts(self, first: int, last: int) -> list[tuple[int, int]]:
        """The top-level AND-ed conditions of ``first..last`` (a WHERE's condition):
        split at each AND outside parentheses that is not a BETWEEN's."""
        pieces: list[tuple[int, int]] = []
        depth = 0
        between = 0
        start = first
        for i in range(first, last + 1):
            kind = self.tokens[i].token_type
            if kind in _OPEN:
                depth += 1
            elif kind in _CLOSE:
                depth -= 1
            elif depth == 0 and kind == TokenType.BETWEEN:
                between += 1
            elif depth == 0 and kind == TokenType.AND:
                if between:
                    between -= 1
                else:
                    pieces.append((start, i - 1))
                    start = i + 1
        pieces.append((start, last))
        return pieces


def subquery_of(node: exp.Expr) -> exp.Select | None:
    """The query that ``node`` is built around, when it is a scalar subquery, EXISTS,
    ``x IN (SELECT ...)``, ``ANY``/``ALL (SELECT ...)`` or ``ARRAY(SELECT ...)``."""
    inner: exp.Expr | None = None
    if isinstance(node, exp.Subquery | exp.Exists | exp.Any | exp.All):
        inner = node.this
    elif isinstance(node, exp.In):
        inner = node.args.get("query")
    elif isinstance(node, exp.Array) and len(node.expressions) == 1:
        inner = node.expressions[0]
    while isinstance(inner, exp.Subquery):
        inner = inner.this
    if isinstance(inner, exp.SetOperation):
        inner = inner.find(exp.Select)
    return inner if isinstance(inner, exp.Select) else None


@dataclass
class SelectLayout:
    """Token ranges of one SELECT: ``start`` (its WITH or SELECT), the SELECT keyword,
    each select-list item, each clause by name (``with``, ``items``, ``from``, ``into``,
    ``where``, ``group``, ``having``, ``window``, ``order``, ``limit``, ``offset``,
    ``fetch``, ``locking``), and its last token."""

    start: int
    keyword: int
    items: list[tuple[int, int]] = field(default_factory=list)
    clauses: dict[str, tuple[int, int]] = field(default_factory=dict)
    end: int = -1
