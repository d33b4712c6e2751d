#!/usr/bin/env bash
# Sets up .venv from the lock file (if needed), lints (ruff, the import-layer contract) and runs
# the test suite. Usage: bash tools/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/_venv.sh
ruff check --quiet .
lint-imports --no-cache >/dev/null || lint-imports --no-cache
exec python -m pytest -q "$@"
