#!/usr/bin/env bash
# Create .venv and install MinT with everything its tests need. Idempotent; safe to re-run.
# torch is pinned to 2.13.0 (a CPU build) by the project's extras: see pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[train,test]'
echo "installed into $(pwd)/.venv (run .venv/bin/mint --help)"
