"""How a pgml statement's error reaches the client: the one path for both protocols.

PostgreSQL's own errors (:class:`ServerError`) are passed on as they are; an error of
the proxy's (:class:`PgmlError`, a message that does not decode) is answered as
PostgreSQL would answer it and PostgreSQL's transaction fails with it; anything else is
the proxy's own bug, logged with its traceback and told as ``XX000``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from handlers.functions import PgmlError
from proxy.engine.upstream import ServerError, Skipped, Upstream
from proxy.wire import codec

log = logging.getLogger("pgml_proxy.errors")

INTERNAL_ERROR = PgmlError(
    "XX000", "internal error in pgml-proxy", hint="The proxy's log has the details."
)


def error_response(error: PgmlError) -> bytes:
    extra = {"W": error.context} if error.context else {}
    return codec.PgError(
        "ERROR", error.sqlstate, error.message, error.detail, error.hint, extra
    ).encode()


def as_pgml_error(error: Exception) -> PgmlError:
    """The error the client is told for one the proxy raised."""
    if isinstance(error, PgmlError):
        return error
    if isinstance(error, codec.MessageFormatError):
        return PgmlError(error.sqlstate, error.message, context=error.context)
    log.error("internal error running a pgml statement", exc_info=error)
    return INTERNAL_ERROR


def refuse(upstream: Upstream, error: PgmlError, *, held: bool = False) -> None:
    """Answer with an error of the proxy's and fail PostgreSQL's batch (and transaction)
    as the statement's own failure would; PostgreSQL's error for it is not the client's."""
    upstream.local(error_response(error), held=held)
    upstream.fail_batch()
    upstream.flush()


def report(upstream: Upstream, error: Exception, *, held: bool = False) -> None:
    """The client is told of ``error`` once, and PostgreSQL's batch fails with it."""
    if isinstance(error, ServerError):  # PostgreSQL failed the batch and said why
        upstream.local(error.for_client(), held=held)
    elif not isinstance(error, Skipped):  # Skipped: an earlier error, already told
        refuse(upstream, as_pgml_error(error), held=held)


class Told:
    """What :func:`told` caught: the block's error, told to the client, or None."""

    error: Exception | None = None


@contextlib.contextmanager
def told(upstream: Upstream, *, held: bool = False) -> Iterator[Told]:
    """Run the block; its error (a lost connection aside: that ends the session) is told
    to the client once (:func:`report`) and goes no further."""
    outcome = Told()
    try:
        yield outcome
    except ConnectionError:
        raise
    except Exception as error:
        report(upstream, error, held=held)
        outcome.error = error
