#!/usr/bin/env bash
# Runs every check and test: lint, types, import layers, unit + integration tests against
# real local servers, and the e2e suite against a real local control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"; ruff check operator tests e2e bench scripts
echo "== mypy --strict"; mypy
echo "== import-linter"; lint-imports
echo "== pytest"
python -m pytest tests "$@"
