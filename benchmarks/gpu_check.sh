#!/usr/bin/env bash
# The one-command device run, ordered by value; see benchmarks/gpu_check.py for the phases and
# docs/performance.md for the budget (<= 540 s on an H200) and how to build what travels.
#
#   bash benchmarks/gpu_check.sh OUT             # on the CUDA machine (carry .whl and .realcache)
#   bash benchmarks/gpu_check.sh --emulate OUT   # the same phases on a CPU, tiny settings (< 90 s)
#
# OUT receives <= 7 small files (summary.json rewritten after every phase, gpu_check.log, bench
# JSONs, seeds.json, leaderboard.md, cuda_tests.txt). Exit status 0 only if every phase is ok.
# FXBENCH_PYTHON selects the interpreter (default python3); it needs only the standard library
# until the carried wheels are installed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 COLUMNS=${COLUMNS_OVERRIDE:-200}
# shellcheck disable=SC2086  # FXBENCH_PYTHON may hold flags, e.g. "python3 -S"
exec ${FXBENCH_PYTHON:-python3} benchmarks/gpu_check.py "$@"
