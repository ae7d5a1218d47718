#!/usr/bin/env bash
# Build what travels to the device (.whl/ and .realcache/prepared/) and check the total against
# 60 MiB; see benchmarks/carry.py. Example: bash benchmarks/carry.sh --archive FracAtlas.zip
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/carry.py "$@"
