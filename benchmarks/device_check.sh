#!/usr/bin/env bash
# The GPU measurement of issue #8 in ONE device call: CUDA/bf16 correctness checks, then the
# standard `mtlora bench` (448x448, batch 32, bf16, eager + torch.compile) with the counts at the
# same setting, written as benchmarks/results/cuda*.json and a RESULTS.md section under $OUT.
#
# The lent machine (python3 3.12 with torch, lightning, timm, torchmetrics, opencv, scipy, ...)
# lacks a few pure-Python dependencies; fetch them here first, at no device time:
#
#   bash benchmarks/device_check.sh --fetch-wheels      # -> .whl/ (kept out of git)
#
# then, with the device tool: run(command="bash benchmarks/device_check.sh", carry=[".whl"],
# timeout_s=590).  Budget: the pytest part takes about a minute, the bench about 6-8 minutes
# (inductor compiles 2 graphs per variant); BENCH_ARGS can trim it, e.g. BENCH_ARGS="--steps 10".
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 albumentations==2.0.8
  albucore==0.0.24 pydantic==2.14.4 pydantic-core annotated-types typing-inspection simsimd stringzilla)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
  for w in "${WHEELS[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl "$w"
  done
  ls -la .whl
  exit 0
fi

OUT="${OUT:-/tmp/mtlora-device}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [[ -d .whl ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

# 1. correctness on CUDA (tests/test_cuda.py is skipped without a GPU)
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log" || true

# 2. the standard measurement + counts at 448/32/bf16, rendered for RESULTS.md
timeout 480 python3 benchmarks/run_bench.py --device cuda --count-at 448 --out "$OUT/cuda.json" \
  -- ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
python3 benchmarks/run_bench.py --from-json "$OUT/cuda.json" >"$OUT/RESULTS_section.md"
echo "done: $OUT"
