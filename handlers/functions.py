"""The pgml functions as the engine sees them, and the one module of ``handlers`` it
imports: their signatures (:mod:`handlers.signatures`), every one the proxy runs by name
(:mod:`handlers.registry`), the names of those the catalog defines in SQL, the errors
they raise, the services they run on, and what the engine must know of a project's
results (its label type, the advisory lock class of a held backend)."""

from handlers.errors import PgmlError, from_server, unsupported
from handlers.holds import HOLD_CLASS
from handlers.inference import LABEL
from handlers.inference import result_type as project_result_type
from handlers.projects import FEATURES, Deployed
from handlers.registry import FUNCTIONS
from handlers.serving import Services
from handlers.signatures import (
    JSON_ARRAY_OIDS,
    RECORD_OID,
    TEXT_ARRAY_OIDS,
    TEXT_OIDS,
    Args,
    CallContext,
    Function,
    Overload,
    accepts_oid,
    no_such_function,
)
from handlers.vectors import SQL_FUNCTIONS

__all__ = [
    "FEATURES",
    "FUNCTIONS",
    "HOLD_CLASS",
    "JSON_ARRAY_OIDS",
    "LABEL",
    "RECORD_OID",
    "SQL_FUNCTIONS",
    "TEXT_ARRAY_OIDS",
    "TEXT_OIDS",
    "Args",
    "CallContext",
    "Deployed",
    "Function",
    "Overload",
    "PgmlError",
    "Services",
    "accepts_oid",
    "from_server",
    "no_such_function",
    "project_result_type",
    "unsupported",
]
