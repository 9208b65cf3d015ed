"""Parsing of ``--upstream`` connection strings."""

from __future__ import annotations

import pytest

from proxy.relay.address import UpstreamAddress, parse_upstream


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            "postgresql://user:p%40ss@db:5433/app",
            UpstreamAddress("db", 5433, "user", "p@ss", "app"),
        ),
        ("postgres://db/app", UpstreamAddress("db", 5432, None, None, "app")),
        ("postgresql://[::1]:6000/x", UpstreamAddress("::1", 6000, None, None, "x")),
        (
            "postgresql:///app?host=/run/pg&port=5444",
            UpstreamAddress("/run/pg", 5444, None, None, "app"),
        ),
        ("postgresql://%2Frun%2Fpg/app", UpstreamAddress("/run/pg", 5432, None, None, "app")),
        (
            "host=db port=5999 user=u password='s' dbname=d",
            UpstreamAddress("db", 5999, "u", "s", "d"),
        ),
    ],
)
def test_parse(dsn: str, expected: UpstreamAddress) -> None:
    assert parse_upstream(dsn) == expected


def test_unix_socket_path() -> None:
    address = parse_upstream("postgresql:///db?host=/tmp/s&port=7")
    assert address.is_unix and address.socket_path == "/tmp/s/.s.PGSQL.7"


@pytest.mark.parametrize("dsn", ["mysql://db/x", "host"])
def test_rejects(dsn: str) -> None:
    with pytest.raises(ValueError):
        parse_upstream(dsn)


def test_sslmode() -> None:
    assert parse_upstream("postgresql://db/app").sslmode == "disable"
    assert parse_upstream("postgresql://db/app?sslmode=require").uses_tls
    assert not parse_upstream("postgresql:///app?host=/run/pg&sslmode=require").uses_tls
    with pytest.raises(ValueError):
        parse_upstream("postgresql://db/app?sslmode=sometimes")
