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


def statement_cancelled() -> PgmlError:
    """PostgreSQL's answer to a statement a cancel stopped."""
    return PgmlError("57014", "canceling statement due to user request")


def invalid_argument(message: str, **kwargs: str) -> PgmlError:
    return PgmlError("22023", message, **kwargs)


def unsupported(message: str, **kwargs: str) -> PgmlError:
    return PgmlError("0A000", message, **kwargs)


def from_server(error: Exception) -> PgmlError | None:
    """PostgreSQL's own error, met on the proxy's own connection (asyncpg's
    ``PostgresError``: a catalog write on a hot standby, a lock timeout), as the
    client's; None for any other exception."""
    sqlstate = getattr(error, "sqlstate", None)
    message = getattr(error, "message", None)
    if not isinstance(sqlstate, str) or not isinstance(message, str) or len(sqlstate) != 5:
        return None
    return PgmlError(
        sqlstate,
        message,
        detail=getattr(error, "detail", None),
        hint=getattr(error, "hint", None),
    )
