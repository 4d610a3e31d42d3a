#!/usr/bin/env bash
# Builds svdq with its tests and runs them (ctest label "cpu"; "gpu" tests skip without a GPU).
#   bash scripts/test.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
bash scripts/install_deps.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DSVDQ_BUILD_TESTS=ON
cmake --build "$build" -j"$(nproc)"
echo "test.sh: built at $(date -u +%T) UTC, load $(cut -d' ' -f1-3 /proc/loadavg)"
ctest --test-dir "$build" --output-on-failure -j"$(nproc)"
