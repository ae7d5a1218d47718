#!/usr/bin/env bash
# One-shot check on an offline CUDA machine (Python 3.12 with torch, torchvision, timm, typer,
# rich, pyyaml, scikit-image, but no pydantic/platformdirs). Usage, from the repo root:
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# Needs the git-ignored .whl/ folder (pydantic, pydantic-core, annotated-types,
# typing-inspection, typing-extensions, platformdirs, and typer 0.29 with annotated-doc and
# shellingham so the tested Typer series is used; cp312 manylinux x86_64 wheels; see
# docs/performance.md for the pip download line). If .realcache/prepared/ holds a prepared
# real-data folder (manifest.csv, masks/, cache/256.npz from
# `fxbench prepare --cache-size 256 --cache-format jpeg`), it also trains, tunes and tests the
# real-data recipe (3 seeds, FXBENCH_GPU_EPOCHS epochs each; default 30).
# Everything printed also goes to OUT_DIR/gpu_check.log. Budget: well inside 10 minutes.
set -uo pipefail
OUT=${1:-${OUT:-/tmp/fxbench-gpu}}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
cd "$(dirname "$0")/.."
SITE=/tmp/fxbench-site
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }

stamp "install the carried wheels into $SITE; fxbench runs from src/ (no build step on the device)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH="$SITE:$PWD/src:${PYTHONPATH:-}"
FX="python3 -m fxbench"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$FX --version
$FX doctor || true

stamp "CUDA tests"
python3 -m pytest -q -m cuda tests/ -p no:cacheprovider 2>&1 | tail -15

stamp "throughput benchmark"
$FX bench --device cuda --models unet_dual:256,deeplabv3_resnet50:384 --n-images 200 --batch 32 --steps 30 \
  --seed-steps 20 --out "$OUT/bench.json"
$FX bench --device cuda --compile --models unet_dual:256,deeplabv3_resnet50:384 --n-images 200 --batch 32 \
  --steps 30 --seed-steps 5 --out "$OUT/bench_compile.json"

PREP=.realcache/prepared
if [ -f "$PREP/manifest.csv" ]; then
  EPOCHS=${FXBENCH_GPU_EPOCHS:-30}
  stamp "real-data recipe: examples/fxbench_best.yaml at 256 px, $EPOCHS epochs, seeds 0,1,2"
  export FXBENCH_RUNS="$OUT/runs"
  $FX train -c examples/fxbench_best.yaml --quiet --seeds 0,1,2 --name real \
    --set data.prepared=$PREP --set data.image_size=256 --set train.epochs=$EPOCHS
  for run in "$OUT"/runs/real-sweep/seed_*; do
    $FX eval "$run" --split val --tta hv
    $FX tune "$run"
    $FX eval "$run" --split test --decision "$run/decision.json"
  done
  $FX ensemble "$OUT"/runs/real-sweep/seed_* --out "$OUT/runs/real-ensemble"
  $FX report "$OUT"/runs/real-sweep/seed_* "$OUT/runs/real-ensemble" --out "$OUT/report"
  cp "$OUT/report/leaderboard.md" "$OUT/leaderboard.md" 2>/dev/null || true
else
  stamp "no $PREP/manifest.csv: skipping the real-data recipe"
fi
stamp "done"
