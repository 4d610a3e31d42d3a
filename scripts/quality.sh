#!/usr/bin/env bash
# The quality benchmark, one command: builds svdq_quality, dumps the real model (tools/minilm.py,
# a private venv), measures every method on the synthetic and the real layers, evaluates the
# real model end to end (sentence-embedding cosine), and plots.
#   bash scripts/quality.sh [OUT_DIR=build/quality] [extra svdq_quality flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-build/quality}"
shift || true
mkdir -p "$out"
bash scripts/install_deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target svdq_quality
python3 tools/minilm.py dump "$out/minilm_dump.safetensors"
./build/bench/svdq_quality --model "$out/minilm_dump.safetensors" --save-dir "$out" \
  --csv "$out/quality.csv" "$@" | tee "$out/quality.md"
./build/bench/svdq_quality --shape 1024x256 --family default --family down --family huge \
  --family gelu --methods data-free,svdquant,+clip,+clip-unw,df+clip-unw,+refine,df+rotate,+rotate,+rotate+refine,+rotate+clip-unw,plus-nosel,plus-norot,svdq-plus \
  --csv "$out/families.csv" | tee "$out/families.md"
./build/bench/svdq_quality --no-synth --model "$out/minilm_dump.safetensors" --lowrank-only 0.15 \
  | tee "$out/lowrank_only.md"
python3 tools/minilm.py eval "$out/minilm_dump.safetensors" "$out"/int4-*.safetensors \
  "$out"/nvfp4-*.safetensors --json "$out/e2e.json" | tee "$out/e2e.txt"
tools/.venv/bin/python tools/plot_quality.py "$out/quality.csv" "$out/quality.png"
echo "results in $out: quality.md, families.md, quality.csv, lowrank_only.md, e2e.txt, e2e.json, quality.png"
