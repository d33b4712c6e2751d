#!/usr/bin/env bash
# Sets up .venv from the lock file (if needed) and runs the test suite.
# Usage: bash tools/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/_venv.sh
exec python -m pytest -q "$@" tests
