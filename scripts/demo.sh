#!/usr/bin/env bash
# Builds and runs the demo on the embedded default layers; extra arguments go to svdq_demo
# (try --help).   bash scripts/demo.sh [--tokens 512] [--format int4] ...
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target svdq_demo
./build/examples/svdq_demo "$@"
