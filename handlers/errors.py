"""Errors that reach the client as PostgreSQL ErrorResponses."""

from __future__ import annotations


class PgmlError(Exception):
    """A failure with a SQLSTATE, a one-line message and optional detail and hint."""

    def __init__(
        self,
        sqlstate: str,
        message: str,
        *,
        detail: str | None = None,
        hint: str | None = None,
        context: str | None = None,
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint
        self.context = context


def invalid_argument(message: str, **kwargs: str) -> PgmlError:
    return PgmlError("22023", message, **kwargs)


def unsupported(message: str, **kwargs: str) -> PgmlError:
    return PgmlError("0A000", message, **kwargs)
