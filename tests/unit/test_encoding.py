"""PostgreSQL's client encodings and Python's codecs for them."""

from __future__ import annotations

import codecs
import contextvars

import pytest

from handlers.errors import PgmlError
from proxy.engine import values
from proxy.wire import encoding

ALL = [
    "BIG5", "EUC_CN", "EUC_JP", "EUC_JIS_2004", "EUC_KR", "EUC_TW", "GB18030", "GBK",
    "ISO_8859_5", "ISO_8859_6", "ISO_8859_7", "ISO_8859_8", "JOHAB", "KOI8R", "KOI8U",
    "LATIN1", "LATIN2", "LATIN3", "LATIN4", "LATIN5", "LATIN6", "LATIN7", "LATIN8",
    "LATIN9", "LATIN10", "MULE_INTERNAL", "SJIS", "SHIFT_JIS_2004", "SQL_ASCII", "UHC",
    "UTF8", "WIN866", "WIN874", "WIN1250", "WIN1251", "WIN1252", "WIN1253", "WIN1254",
    "WIN1255", "WIN1256", "WIN1257", "WIN1258",
]  # fmt: skip
"""Every client encoding PostgreSQL has (pg_wchar.h)."""


@pytest.mark.parametrize("name", ALL)
def test_every_client_encoding_has_a_codec_or_none(name: str) -> None:
    codec = encoding.python_codec(name)
    if name in ("EUC_TW", "MULE_INTERNAL"):
        assert codec is None
        return
    assert codec is not None
    codecs.lookup(codec)
    assert "pgml.embed('x')".encode(codec) == b"pgml.embed('x')"  # ASCII stays ASCII


def test_names_are_read_as_postgresql_reports_them() -> None:
    assert encoding.python_codec("latin1") == "latin-1"
    assert encoding.python_codec("UTF8") == "utf-8"


def test_the_current_encoding_is_the_contexts() -> None:
    def inner() -> str:
        encoding.use("latin-1", "LATIN1")
        return encoding.current()

    assert contextvars.copy_context().run(inner) == "latin-1"
    assert encoding.current() == "utf-8"


def test_a_value_the_client_encoding_lacks_fails_as_postgresql_fails() -> None:
    def inner() -> None:
        encoding.use("latin-1", "LATIN1")
        assert values.client_bytes("café") == "café".encode("latin-1")
        with pytest.raises(PgmlError) as raised:
            values.client_bytes("5 €")
        assert raised.value.sqlstate == "22P05"
        assert raised.value.message == (
            'character with byte sequence 0xe2 0x82 0xac in encoding "UTF8" has no '
            'equivalent in encoding "LATIN1"'
        )

    contextvars.copy_context().run(inner)
