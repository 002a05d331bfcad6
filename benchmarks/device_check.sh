#!/usr/bin/env bash
# The GPU measurement of the performance targets (benchmarks/RESULTS.md), in two device calls of a few minutes each:
#
#   bash benchmarks/device_check.sh eager      # CUDA checks (tests/test_cuda.py), then every variant
#                                              # eager at 448x448, batch 32, bf16 (counted too)
#   bash benchmarks/device_check.sh compiled   # config and full fine-tuning under torch.compile
#   bash benchmarks/device_check.sh data       # loader CPU cost per sample (raw / prepared / device
#                                              # augmentation) and DeviceAugment timed on the GPU
#
# Results land in $OUT (the device tool brings them back): JSON reports, logs, and the markdown
# sections; put them into benchmarks/RESULTS.md with
#   python benchmarks/run_bench.py --from-json <files_at>/cuda.json --update-results
#
# The lent machine (python3 3.12 with torch, lightning, timm, torchmetrics, opencv, scipy, ...)
# lacks a few pure-Python dependencies; fetch them here first, at no device time:
#
#   bash benchmarks/device_check.sh --fetch-wheels      # -> .whl/ (kept out of git)
#
# then call the device tool with carry=[".whl"] and timeout_s=590 for each part, one right after
# the other (the machine stays warm only briefly between calls).
set -euo pipefail
cd "$(dirname "$0")/.."

# the versions this project's CI installs (pip show in .venv); pydantic pins pydantic-core exactly
WHEELS=(jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 albumentations==2.0.8
  albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 simsimd==6.5.16 stringzilla==5.3.2
  litdata==0.2.76 obstore==0.12.1 boto3==1.44.8 botocore==1.44.8 jmespath==1.1.0 s3transfer==0.19.3
  tifffile==2026.3.3)
PART="${1:-eager}"

if [[ "$PART" == "--fetch-wheels" ]]; then
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

case "$PART" in
  eager)
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log" || true
    # the cuda preset runs at 448x448, batch 32, bf16: its own counts are the issue's setting (no --count-at);
    # whatever the tests left of the call's ~590 s goes to the bench
    timeout $((570 - SECONDS)) python3 benchmarks/run_bench.py --device cuda --out "$OUT/cuda.json" 2>&1 |
      tee "$OUT/bench_cuda.log"
    python3 benchmarks/run_bench.py --from-json "$OUT/cuda.json" >"$OUT/section_cuda.md"
    ;;
  compiled)
    timeout 560 python3 benchmarks/run_bench.py --device cuda-compiled --out "$OUT/cuda_compiled.json" 2>&1 |
      tee "$OUT/bench_cuda_compiled.log"
    python3 benchmarks/run_bench.py --from-json "$OUT/cuda_compiled.json" >"$OUT/section_cuda_compiled.md"
    ;;
  data)
    # the section it prints goes into benchmarks/RESULTS.md by hand (the device's copy is not kept)
    timeout 560 python3 benchmarks/data_throughput.py --augment-device cuda --workers 0 4 8 2>&1 |
      tee "$OUT/data_throughput.log"
    ;;
  *)
    echo "usage: $0 [eager|compiled|data|--fetch-wheels]" >&2
    exit 2
    ;;
esac
echo "done: $OUT"
