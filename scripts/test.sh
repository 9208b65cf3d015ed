#!/usr/bin/env bash
# Set up the virtual environment with the test tools and run every check:
# ruff (lint and format), mypy, and the whole pytest suite against real PostgreSQL servers
# that the tests start themselves. As root, the programs some tests drive (Chromium,
# docker-compose, ...) are installed from Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PGML_PROXY_EXTRAS=test source scripts/setup.sh
source scripts/test-tools.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
