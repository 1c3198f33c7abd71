#!/usr/bin/env bash
# One prepared check for a machine with one NVIDIA GPU (issue 15): installs covidct, runs (a) the study's vgg19_bn
# and the default backbone for 60 epochs each (bf16-mixed; speed), (b) the default recipe with 3 seeds (test
# figures), (c) covidct pretrain and the fine-tuned result, (d) a 1-GPU DDP run through the CLI, (e) nvidia-smi and
# the versions, and writes every figure to OUT (default device-check/) within 8 minutes of wall time.
#
#   benchmarks/device_check.sh [--data DIR] [--out DIR] [--budget SECONDS]   # refuses without a GPU
#   benchmarks/device_check.sh --dry-run                                      # every step tiny, on CPU (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
DATA="${COVIDCT_DATA_DIR:-../shared/datasets/covid-ct}"
OUT=device-check
BUDGET=420
STEPS=a,b,c,d
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --data) DATA="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    --steps) STEPS="$2"; shift ;;
    *) echo "device_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
mkdir -p "$OUT"
START=$(date +%s)

if [ "$DRY" = 0 ]; then
  if ! command -v nvidia-smi >/dev/null || ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "device_check.sh: no NVIDIA GPU visible (nvidia-smi / torch.cuda.is_available()); use --dry-run to check the script on CPU" >&2
    exit 2
  fi
  nvidia-smi > "$OUT/nvidia-smi.txt"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.csv"
fi

# install: the project's own environment when there is one; offline machines: the packages present, wheels of
# what is missing under .whl/ (see benchmarks/RESULTS.md), and covidct itself from src/
if ! "$PY" -c 'import covidct' 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/covidct-site .whl/*.whl
    export PYTHONPATH="/tmp/covidct-site:${PYTHONPATH:-}"
  fi
  export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
fi
"$PY" - > "$OUT/versions.json" <<'PYEOF'
import json, platform, torch, torchvision, lightning, timm, covidct
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "torchvision": torchvision.__version__, "lightning": lightning.__version__, "timm": timm.__version__,
                  "covidct": covidct.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))
PYEOF

if [ "$DRY" = 1 ]; then
  DATA="$OUT/tiny-covid-ct"
  "$PY" -c "import sys; sys.path.insert(0, '.'); from pathlib import Path; from tests.conftest import make_covidct_layout; make_covidct_layout(Path('$DATA'), {'train': {'COVID': 8, 'NonCOVID': 8}, 'val': {'COVID': 4, 'NonCOVID': 4}, 'test': {'COVID': 4, 'NonCOVID': 4}})"
  export COVIDCT_ALLOW_PARTIAL_SOURCES=1
fi
export COVIDCT_NO_PROGRESS=1
"$PY" benchmarks/device_check.py --data "$DATA" --out "$OUT" --budget "$BUDGET" --steps "$STEPS" $([ "$DRY" = 1 ] && echo --dry-run)
echo "device check: $(( $(date +%s) - START )) s of wall time; results in $OUT/results.md and results.json"
