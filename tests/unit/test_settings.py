"""Settings read from flags and the environment: the name, the relay processes."""

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


@pytest.mark.parametrize("given", ["0", "-1", "257"])
def test_workers_out_of_range_is_refused(given: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse_settings(["--workers", given])
    assert stopped.value.code == 2
    assert "--workers must be between 1 and 256" in capsys.readouterr().err


def test_workers_given_or_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_settings([]).workers == 1
    assert parse_settings(["--workers", "4"]).workers == 4
    monkeypatch.setenv("PGML_PROXY_WORKERS", "3")
    assert parse_settings([]).workers == 3
