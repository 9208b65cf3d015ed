"""The SQLSTATE of an exception raised in a training worker.

A worker reports what it raised; the proxy fails the call with this SQLSTATE.  What a
library refuses (a hyperparameter the Trainer or its scheduler will not take, data the
model cannot be fed) is the caller's bad argument; memory running out, a missing column,
a refused or missing file and a package that is not installed are what PostgreSQL would
call them; a library's runtime failure (a lost peer, a device error) is a system error,
as a process that dies is; XX000 is left for an exception the proxy's own code raised, a
bug.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path

INTERNAL = "XX000"
OUT_OF_MEMORY = "53200"
OUT_OF_MEMORY_KINDS = frozenset({"MemoryError", "OutOfMemoryError"})
"""Exception names that mean memory ran out (``torch.OutOfMemoryError`` among them)."""
_MISSING_COLUMN = re.compile(r"\bcolumns?\b.*\b(not in|not found|does not exist|missing)\b", re.I)
_REFUSED = (ValueError, TypeError, IndexError, AssertionError)
"""What a library raises for values it will not take."""
_OWN_CODE = Path(__file__).resolve().parents[1]
"""The ``handlers`` package: an exception raised there is the proxy's."""


def sqlstate_of(error: BaseException) -> str:
    """The SQLSTATE for ``error``, raised in a training worker."""
    own = getattr(error, "sqlstate", None)
    if isinstance(own, str) and len(own) == 5:
        return own  # a PgmlError: the worker's code chose it
    if type(error).__name__ in OUT_OF_MEMORY_KINDS:
        return OUT_OF_MEMORY
    if isinstance(error, PermissionError):
        return "42501"
    if isinstance(error, KeyError | ValueError) and _MISSING_COLUMN.search(str(error)):
        return "42703"
    if _raised_by_proxy(error):
        return INTERNAL
    if isinstance(error, FileNotFoundError):
        return "58P01"
    if isinstance(error, NotImplementedError | ImportError):
        return "0A000"
    if isinstance(error, _REFUSED):
        return "22023"
    if isinstance(error, OSError):
        return "58030"
    if isinstance(error, RuntimeError):
        return "58000"
    return INTERNAL


def _raised_by_proxy(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is in the proxy's code."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return True
    return Path(frames[-1].filename).resolve().is_relative_to(_OWN_CODE)
