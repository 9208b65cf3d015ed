#!/usr/bin/env bash
# Set up the virtual environment (first run only) and start pgml-proxy.
# With no --upstream it runs on an embedded PostgreSQL kept in the per-user data folder.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec .venv/bin/pgml-proxy "$@"
