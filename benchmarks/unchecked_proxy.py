"""``pgml-proxy`` without the serving privilege check: the reference of
``benchmarks/serve_access.py``. Takes the proxy's own flags.

    .venv/bin/python -m benchmarks.unchecked_proxy --upstream postgresql://...

It drops the ``authorize`` hook of every pgml function and runs the proxy's own command
line, so the two proxies differ in that check alone. Never run it for users: any role
that can log in is then served every project.
"""

from __future__ import annotations

import dataclasses
import sys

from handlers.functions import Function
from handlers.registry import FUNCTIONS
from proxy.cli import main


def without_checks() -> None:
    for name, function in FUNCTIONS.items():
        overloads = tuple(dataclasses.replace(o, authorize=None) for o in function.overloads)
        FUNCTIONS[name] = Function(function.name, overloads)


if __name__ == "__main__":
    without_checks()
    sys.exit(main())
