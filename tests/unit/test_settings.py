"""The proxy's name: given, from the environment, or its host and port."""

from __future__ import annotations

import socket

import pytest

from proxy.config import parse_settings


def test_the_name_defaults_to_host_and_port() -> None:
    assert parse_settings(["--port", "7000"]).name == f"{socket.gethostname()}:7000"


def test_the_name_given_or_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_settings(["--name", "edge-1"]).name == "edge-1"
    monkeypatch.setenv("PGML_PROXY_NAME", "edge-2")
    assert parse_settings([]).name == "edge-2"
