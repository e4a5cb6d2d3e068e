#!/usr/bin/env bash
# Lint, format and type checks (CI runs them before the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy ssl_components flows
