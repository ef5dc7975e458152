#!/usr/bin/env bash
# MinT's device check, for a GPU machine with no network (written for an H200), in well under 10 minutes:
#   1. installs the wheels carried in deploy/gpu-wheels/ into a private target: what such a machine lacks
#      (msgspec, sqlite-utils, aiokafka, starlette, uvicorn and their needs); its python3 already has
#      torch, peft, transformers, safetensors, anyio, click, httpx and pytest;
#   2. runs the tests marked `cuda` (pytest -m cuda);
#   3. builds a synthetic 1B base and runs `mint bench train` and `mint bench serve` on it, --device cuda;
#   4. writes every result into one folder (--out): pytest.xml, pytest.log, bench-train.json,
#      bench-serve.json, summary.json, check.log (six files: a device tool's $OUT takes eight).
#
#   deploy/gpu-check.sh --fill-wheels       here, with network: download the wheels (about 2 MB, cp312
#                                            manylinux x86-64) into deploy/gpu-wheels/ (git-ignored)
#   deploy/gpu-check.sh --out DIR           on the GPU machine (DIR default: gpu-check-results)
#   deploy/gpu-check.sh --cpu-dry-run --out DIR
#                                            the same steps on a CPU with the project's .venv, on the tiny
#                                            base with small sizes, to check the script itself
#
# The synthetic base is built under $MINT_HOME (default: a scratch directory), never in --out: it is 2 GB.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=deploy/gpu-wheels
# What an H200 image lacks, at the versions MinT is tested with (see pyproject.toml).
WANTED=(
  msgspec==0.23.0 sqlite-utils==4.2.1 sqlite-fts4==1.0.3 click-default-group==1.2.4
  aiokafka==0.14.0 async-timeout==5.0.1 starlette==1.10.0 uvicorn==0.55.0
)
CUDA_TESTS=(tests/test_device.py)

out=gpu-check-results
dry_run=0
fill=0
while [ "$#" -gt 0 ]; do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --cpu-dry-run) dry_run=1; shift ;;
    --fill-wheels) fill=1; shift ;;
    *) echo "gpu-check.sh: unknown argument $1 (--out DIR, --cpu-dry-run, --fill-wheels)" >&2; exit 2 ;;
  esac
done

if [ "$fill" = 1 ]; then
  mkdir -p "$WHEELS"
  python="${PYTHON:-.venv/bin/python}"
  "$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$WHEELS" "${WANTED[@]}"
  du -sh "$WHEELS"
  exit 0
fi

mkdir -p "$out"
out="$(cd "$out" && pwd)"
exec > >(tee "$out/check.log") 2>&1
started=$(date +%s)
say() { echo "gpu-check [$(( $(date +%s) - started ))s] $*"; }

if [ "$dry_run" = 1 ]; then
  python=.venv/bin/python
  device=cpu base=tiny steps=1 policies=2 requests=4 tokens=4
else
  python="${PYTHON:-python3}"
  device=cuda base=synthetic-1b steps=2 policies=4 requests=64 tokens=16
  if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "gpu-check.sh: no wheels in $WHEELS: run deploy/gpu-check.sh --fill-wheels where pip has network" >&2
    exit 2
  fi
  say "installing $(ls "$WHEELS"/*.whl | wc -l) carried wheels"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/mint-gpu-site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/mint-gpu-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MINT_HOME="${MINT_HOME:-$(mktemp -d /tmp/mint-gpu-check-home.XXXXXX)}"
# No install of MinT itself: the checkout is on PYTHONPATH and `mint` is its CLI's main.
mint=("$python" -c 'import sys; from mint.cli import main; sys.argv[0] = "mint"; main()')

"$python" - <<'EOF'
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU:",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
EOF

say "pytest -m cuda ${CUDA_TESTS[*]}"
set +e
timeout 120 "$python" -m pytest -p no:cacheprovider -q -rs -m cuda --junitxml="$out/pytest.xml" \
  "${CUDA_TESTS[@]}" >"$out/pytest.log" 2>&1
pytest_rc=$?
set -e
tail -n 15 "$out/pytest.log"

# Each benchmark prints one JSON object on stdout; its progress goes to this log.
bench() {
  local name=$1
  shift
  say "mint bench $name $*"
  set +e
  timeout 200 "${mint[@]}" bench "$name" "$@" --json >"$out/bench-$name.json"
  local rc=$?
  set -e
  [ "$rc" = 0 ] || say "mint bench $name failed (exit $rc)"
}

if [ "$base" != tiny ] && [ ! -f "$MINT_HOME/bases/$base/config.json" ]; then
  say "building the $base base (the benchmarks then find it in \$MINT_HOME/bases)"
  timeout 120 "${mint[@]}" base create synthetic "$MINT_HOME/bases/$base" --params "${base#synthetic-}"
fi
bench train --device "$device" --base "$base" --steps "$steps" --policies "$policies"
bench serve --device "$device" --base "$base" --requests "$requests" --tokens "$tokens"

"$python" - "$out" "$pytest_rc" "$device" <<'EOF'
import json, sys
from pathlib import Path

import torch

out, pytest_rc, device = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
summary = {
    "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)",
    "torch": torch.__version__,
    "pytest_cuda_exit": pytest_rc,
}
for name in ("train", "serve"):
    text = (out / f"bench-{name}.json").read_text().strip()
    summary[f"bench_{name}"] = json.loads(text) if text else None
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps({k: v for k, v in summary.items() if not k.startswith("bench_")}))
for name in ("train", "serve"):
    report = summary[f"bench_{name}"] or {}
    keys = [k for k in report if k.endswith(("speedup", "ratio", "tokens_per_s", "of_bound"))]
    print(name, {k: report[k] for k in keys})
ok = pytest_rc in (0, 5) and all(summary[f"bench_{n}"] for n in ("train", "serve"))
sys.exit(0 if ok else 1)
EOF
say "done: results in $out"
