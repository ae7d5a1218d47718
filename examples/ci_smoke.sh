#!/usr/bin/env bash
# fxbench CI smoke test: the whole protocol on a small synthetic archive, in under a minute on
# 2 CPU cores, with no network and no GPU. Copy it into your CI; it exits non-zero on the first
# failure.
#
#   synth -> prepare (64 px cache) -> train (1 tiny epoch) -> eval val -> tune (val)
#         -> eval test (sealed, with the decision) -> report -> predict (a folder of images)
#
# Usage: examples/ci_smoke.sh [WORK_DIR]     (from any folder; needs only an installed fxbench)
#   WORK_DIR  where everything goes (default: a new temporary folder, kept for inspection).
# Environment: FXBENCH (the command, default `fxbench`), SMOKE_DEVICE (default cpu).
set -euo pipefail

FXBENCH=${FXBENCH:-fxbench}
DEVICE=${SMOKE_DEVICE:-cpu}
WORK=${1:-$(mktemp -d "${TMPDIR:-/tmp}/fxbench-smoke.XXXXXX")}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# A private data home, so the smoke test never touches the user's (or the CI cache's) data.
export FXBENCH_HOME="$WORK/home"
export HF_HUB_OFFLINE=1
RUN="$WORK/runs/smoke"
PREP="$WORK/prepared"

step() { printf '\n==> %s\n' "$*"; }
trap 'status=$?; [ $status -eq 0 ] || printf "\nSMOKE FAILED (exit %s); files are in %s\n" "$status" "$WORK" >&2' EXIT

step "$FXBENCH --version"
$FXBENCH --version

step "synth: 48 small synthetic radiographs in FracAtlas layout"
$FXBENCH synth "$WORK/archive" --n-images 48 --scale 0.25 --large-fraction 0.05 --positive-fraction 0.3 --seed 0

step "prepare: masks, manifest, grouped split, one 64 px cache"
$FXBENCH prepare --archive "$WORK/archive" --out "$PREP" --split-mode grouped --cache-size 64 --workers 2

step "train: 1 epoch of a tiny dual-head U-Net (a few steps; --set overrides only, no config file)"
$FXBENCH train --run-dir "$RUN" --quiet \
  --set data.prepared="$PREP" --set data.image_size=64 \
  --set model.name=unet_dual --set model.base_channels=8 \
  --set train.epochs=1 --set train.batch_size=8 --set train.max_steps_per_epoch=4 \
  --set eval.bootstrap=200 --set runtime.device="$DEVICE"

step "eval on val: predictions/val.npz + metrics/val.json"
$FXBENCH eval "$RUN" --split val

step "tune on val: threshold and presence rule -> decision.json"
$FXBENCH tune "$RUN"

step "eval on test, once, with the frozen decision (logged in test_access.log)"
$FXBENCH eval "$RUN" --split test --decision "$RUN/decision.json"

step "report: leaderboard and plots"
$FXBENCH report "$RUN" --out "$WORK/report"

step "predict: masks, overlays and a table for a folder of images (here: the fractured ones)"
$FXBENCH predict "$RUN" "$WORK/archive/FracAtlas/images/Fractured" --out "$WORK/predict" --device "$DEVICE"

# Checks a CI can rely on: the artifacts exist and the test split was opened exactly once.
for f in predictions/val.npz predictions/test.npz metrics/val.json metrics/test.json decision.json test_access.log; do
  [ -s "$RUN/$f" ] || { echo "missing $RUN/$f" >&2; exit 1; }
done
for f in report/leaderboard.md report/report.md predict/predictions.csv predict/predictions.json; do
  [ -s "$WORK/$f" ] || { echo "missing $WORK/$f" >&2; exit 1; }
done
accesses=$(wc -l < "$RUN/test_access.log" | tr -d ' ')
[ "$accesses" = 1 ] || { echo "expected 1 test access, found $accesses" >&2; exit 1; }

cat <<DONE

smoke test passed
  archive      $WORK/archive
  prepared     $PREP
  run          $RUN   (metrics/, predictions/, decision.json, test_access.log)
  report       $WORK/report/report.md   ($WORK/report/leaderboard.md)
  predict      $WORK/predict/predictions.csv   (masks/, overlays/)
DONE
