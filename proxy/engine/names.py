"""Names of the proxy's own prepared statements, portals and temp tables in a client's
session.

Each carries a token drawn when the process starts, so that no name a client gives its
own statements, portals, cursors or tables is one of the proxy's.
"""

from __future__ import annotations

import secrets

TOKEN = secrets.token_hex(6)


def own(name: str) -> str:
    """The proxy's object ``name``: ``__pgml_<token>_<name>`` (an identifier of at most
    63 bytes for names up to 43 characters)."""
    return f"__pgml_{TOKEN}_{name}"
