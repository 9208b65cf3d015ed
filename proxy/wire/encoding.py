"""The text encoding of the session whose messages are being read and written: its
``client_encoding``, which PostgreSQL reports in a ParameterStatus at startup and after
every change.  The engine answers each client message in a context of its own, which
:func:`use` sets; text the proxy reads from or writes to that session goes through
:func:`current`."""

from __future__ import annotations

import contextvars

PYTHON_CODECS = {
    "UTF8": "utf-8",
    "SQL_ASCII": "utf-8",
    "LATIN1": "latin-1",
    "LATIN2": "iso8859-2",
    "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9",
    "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5",
    "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7",
    "ISO_8859_8": "iso8859-8",
    "WIN866": "cp866",
    "WIN874": "cp874",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    "WIN1253": "cp1253",
    "WIN1254": "cp1254",
    "WIN1255": "cp1255",
    "WIN1256": "cp1256",
    "WIN1257": "cp1257",
    "WIN1258": "cp1258",
    "KOI8R": "koi8-r",
    "KOI8U": "koi8-u",
    "EUC_JP": "euc-jp",
    "EUC_CN": "gb2312",
    "EUC_KR": "euc-kr",
    "EUC_JIS_2004": "euc-jis-2004",
    "SJIS": "cp932",
    "SHIFT_JIS_2004": "shift-jis-2004",
    "BIG5": "cp950",
    "GBK": "gbk",
    "UHC": "cp949",
    "GB18030": "gb18030",
    "JOHAB": "johab",
}
"""PostgreSQL's client encodings by the name it reports, and Python's codec for each
(``SQL_ASCII`` passes bytes unconverted; the proxy reads them as UTF-8).  ``EUC_TW`` and
``MULE_INTERNAL`` have none."""

_current: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "client_encoding", default=("utf-8", "UTF8")
)


def python_codec(name: str) -> str | None:
    """Python's codec for PostgreSQL's encoding ``name`` (as ParameterStatus spells it)."""
    return PYTHON_CODECS.get(name.upper())


def use(codec: str, name: str) -> None:
    """The current context reads and writes the session's text in ``codec``, Python's
    for PostgreSQL's encoding ``name``."""
    _current.set((codec, name))


def current() -> str:
    """Python's codec for the current session's text."""
    return _current.get()[0]


def current_name() -> str:
    """PostgreSQL's name for it."""
    return _current.get()[1]
