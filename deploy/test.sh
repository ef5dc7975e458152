#!/usr/bin/env bash
# The test command: install (idempotent), lint, type-check, then every test not marked slow or chaos.
# The default run exercises both log backends (SQLite and a real Kafka-protocol broker) and every
# actor, and a subset of the fault tests. `deploy/test.sh -m slow` runs the slow ones, `-m chaos` the rest
# of the fault tests; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ " $* " == *" slow"* ]]; then deploy/install.sh --with-smollm2; else deploy/install.sh; fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
if [ "$#" -eq 0 ]; then set -- -m "not slow and not chaos"; fi
exec .venv/bin/pytest "$@"
