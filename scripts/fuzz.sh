#!/usr/bin/env bash
# Fuzzes the safetensors reader, quantized-layer loading and forward, and calibration statistics
# (load_calibration): builds fuzz/fuzz_safetensors.cpp with clang's libFuzzer plus
# AddressSanitizer and UndefinedBehaviorSanitizer, seeds a corpus with valid files, and runs it.
#
#   scripts/fuzz.sh [SECONDS]      (default 60)
#
# Environment: CXX_FUZZ (default clang++; needs libclang-rt-dev for -fsanitize=fuzzer),
# SVDQ_FUZZ_BUILD (default build-fuzz), SVDQ_FUZZ_JOBS (parallel compile jobs, default 2).
# Exit status: 0 when the run ends without a finding; non-zero on a crash, a sanitizer report,
# a failed property check, a timeout or an out-of-memory (the input is saved under
# $SVDQ_FUZZ_BUILD/artifacts/ and printed as a reproduction command).
set -euo pipefail

SECONDS_TO_RUN="${1:-60}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${SVDQ_FUZZ_BUILD:-$ROOT/build-fuzz}"
CXX="${CXX_FUZZ:-clang++}"
JOBS="${SVDQ_FUZZ_JOBS:-2}"

if ! command -v "$CXX" > /dev/null; then
  echo "fuzz.sh: $CXX not found (install clang and libclang-rt-dev, or set CXX_FUZZ)" >&2
  exit 2
fi

mkdir -p "$BUILD/obj" "$BUILD/corpus" "$BUILD/seeds" "$BUILD/artifacts"

# No fast-math and no FP contraction, as the library's own build (the formats are bit-exact).
CXXFLAGS=(-std=c++20 -g -O1 -fno-omit-frame-pointer -ffp-contract=off
          -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
          -fopenmp -I "$ROOT/include" -I "$ROOT/src" -I /usr/include/eigen3)

# The library's CPU core is compiled whole: load_quantized needs validate() (src/quantize.cpp),
# which links against the rest of the pipeline. Objects are rebuilt when a source or any header
# is newer than them.
newest_header="$(ls -t "$ROOT"/include/svdq/*.hpp "$ROOT"/src/*.hpp | head -n 1)"
objects=()
pids=()
for src in "$ROOT"/src/*.cpp "$ROOT"/fuzz/fuzz_safetensors.cpp; do
  obj="$BUILD/obj/$(basename "${src%.cpp}").o"
  objects+=("$obj")
  if [[ ! -f "$obj" || "$src" -nt "$obj" || "$newest_header" -nt "$obj" ]]; then
    echo "fuzz.sh: compiling $(basename "$src")"
    "$CXX" "${CXXFLAGS[@]}" -c "$src" -o "$obj" &
    pids+=($!)
    if (( ${#pids[@]} >= JOBS )); then
      wait "${pids[0]}"
      pids=("${pids[@]:1}")
    fi
  fi
done
for pid in "${pids[@]}"; do wait "$pid"; done

"$CXX" -fsanitize=fuzzer,address,undefined -fopenmp "${objects[@]}" -o "$BUILD/fuzz_safetensors"

# Tokens of the format, so mutations reach the validation rules quickly.
cat > "$BUILD/safetensors.dict" << 'EOF'
"{"
"}"
"["
"]"
":"
","
"\"dtype\""
"\"shape\""
"\"data_offsets\""
"\"__metadata__\""
"\"F32\""
"\"F16\""
"\"BF16\""
"\"U8\""
"\"I8\""
"\"F8_E4M3\""
"\"F64\""
"\"BOOL\""
"\"svdq.layer.\""
"\"format\""
"\"int4\""
"\"nvfp4\""
"\"storage\""
"\"bf16\""
"\"f16\""
"\"rank\""
"\"group_size\""
"\"in_features\""
"\"out_features\""
"\"bias\""
"\"svd\""
"\"exact\""
".qweight"
".wscales"
".wtscale"
".act_tscale"
".smooth"
".lora_down"
".lora_up"
".bias"
"18446744073709551615"
"9223372036854775807"
"-1"
"1e999"
"\"svdq.calib.\""
".absmax"
".samples"
".gram"
"\"rows_observed\""
"\"max_rows\""
"\"seed\""
"\"fingerprint\""
EOF

echo "fuzz.sh: running for ${SECONDS_TO_RUN}s"
set +e
SVDQ_FUZZ_SEED_DIR="$BUILD/seeds" "$BUILD/fuzz_safetensors" \
  -max_total_time="$SECONDS_TO_RUN" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -dict="$BUILD/safetensors.dict" -artifact_prefix="$BUILD/artifacts/" -print_final_stats=1 \
  "$BUILD/corpus" "$BUILD/seeds"
status=$?
set -e
if (( status != 0 )); then
  echo "fuzz.sh: FAILED (exit $status). Reproduce with:" >&2
  for a in "$BUILD"/artifacts/*; do
    [[ -f "$a" ]] && echo "  $BUILD/fuzz_safetensors $a" >&2
  done
  exit "$status"
fi
echo "fuzz.sh: no findings in ${SECONDS_TO_RUN}s"
