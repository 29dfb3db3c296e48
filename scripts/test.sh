#!/usr/bin/env bash
# README's test command: set up, then run every check offline: ruff (lint), the import-layer
# check (scripts/check_layers.py), mypy (configured in pyproject.toml), then the test suite.
# Every check runs even when an earlier one fails; the script fails if any of them did.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
failed=()
check() {
  echo "== $1"
  "${@:2}" || failed+=("$1")
}
check "ruff" python3 -m ruff check .
check "import layers" python3 scripts/check_layers.py
check "mypy" python3 -m mypy
check "pytest" env HF_HUB_OFFLINE=1 python3 -m pytest -q
if ((${#failed[@]})); then
  echo "failed: ${failed[*]}"
  exit 1
fi
