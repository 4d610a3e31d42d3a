#!/usr/bin/env bash
# The GPU suite in one call (docs/benchmarks.md, "The GPU suite").
#
#   bash scripts/gpu_suite.sh pack DIR    # here, on the build machine (nvcc, no GPU needed)
#   DIR/run.sh                            # on the GPU machine; logs and JSON under $OUT (or DIR/out)
#
# `pack` builds the CUDA configuration in build-gpu/ and writes a self-contained folder: the GPU
# test and benchmark binaries, the svdq command and the mlp_engine example, the non-CUDA shared libraries they need (the CUDA runtime is linked
# statically; cuBLAS comes from the GPU machine's toolkit), run.sh and the summary script. run.sh
# checks that the binaries start, runs the GPU tests, compute-sanitizer memcheck and racecheck on a
# small subset, the benchmarks, `svdq bench --gpu` and mlp_engine's block on the GPU, each under its own time limit (all together well under 8
# minutes on an H200), and prints a summary table last.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

usage() { echo "usage: bash scripts/gpu_suite.sh pack DIR" >&2; exit 2; }
[ $# -eq 2 ] && [ "$1" = pack ] || usage
dir=$2
case "$dir" in /*) ;; *) dir="$root/$dir" ;; esac

command -v nvcc >/dev/null || { echo "gpu_suite: nvcc not found: the CUDA toolkit is needed to pack" >&2; exit 1; }
bash scripts/install_deps.sh
build=build-gpu
# Hopper (the only GPU this project measures on) plus sm_80 SASS; override with SVDQ_GPU_ARCHS.
archs="${SVDQ_GPU_ARCHS:-80-real;90-real}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DSVDQ_ENABLE_CUDA=ON -DSVDQ_BUILD_TESTS=ON \
      -DSVDQ_BUILD_BENCHMARKS=ON -DSVDQ_BUILD_EXAMPLES=ON -DSVDQ_BUILD_CLI=ON \
      "-DCMAKE_CUDA_ARCHITECTURES=$archs" >/dev/null
cmake --build "$build" -j"$(nproc)" --target test_gpu bench_gpu svdq_cli mlp_engine

rm -rf "$dir"
mkdir -p "$dir/bin" "$dir/lib"
cp "$build/tests/test_gpu" "$build/bench/bench_gpu" "$build/svdq" "$build/examples/mlp_engine" "$dir/bin/"
cp scripts/gpu_summary.py "$dir/"
# Provenance for the numbers: the commit the pack was built from (and whether the tree had
# uncommitted changes), the build time and the architectures; run.sh copies it next to the results.
{
  if commit=$(git rev-parse --short=12 HEAD 2>/dev/null); then
    [ -z "$(git status --porcelain --untracked-files=normal 2>/dev/null)" ] || commit="$commit +uncommitted changes"
  else
    commit="unknown (not a git checkout)"
  fi
  echo "commit $commit"
  echo "packed $(date -u +%Y-%m-%dT%H:%M:%SZ), CUDA architectures $archs"
} >"$dir/build.txt"
# The DeepCompressor fixtures of the Nunchaku variants (test GpuVariantFixtures, SVDQ_TEST_DATA_DIR).
mkdir -p "$dir/data/nunchaku"
cp tests/data/nunchaku/*unsigned*.nunchaku.safetensors tests/data/nunchaku/*wcscales.nunchaku.safetensors "$dir/data/nunchaku/"
# Non-CUDA shared libraries the binaries load (Google Benchmark, libgomp, ...); glibc, libstdc++ and
# the CUDA libraries come from the GPU machine.
for bin in "$dir"/bin/*; do
  ldd "$bin" | awk '/=> \// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libgcc_s.so*|libstdc++.so*) ;;
      libcuda.so*|libcudart.so*|libcublas*.so*|libnvidia*) ;;
      *) cp -L "$lib" "$dir/lib/" ;;
    esac
  done
done

cat >"$dir/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the svdq GPU suite; see scripts/gpu_suite.sh. Env: OUT (results folder), SVDQ_BENCH_SHAPES
# (full | quick), SVDQ_GPU_TEST_FILTER (gtest filter of the GPU tests), SVDQ_CLI_BENCH_M (the token
# counts of `svdq bench --gpu`), SVDQ_SUITE_STEPS (the steps to run, comma-separated, of tests,
# memcheck, racecheck, bench, svdq_bench, mlp_engine; default all: a rerun after a step ran out of
# time need not pay for the others again).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="${OUT:-$here/out}"
mkdir -p "$out"
cp "$here/build.txt" "$out/build.txt" 2>/dev/null
cublas_dirs=$(ls -d /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
              /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib \
              /opt/torch/.venv/lib/python3*/site-packages/nvidia/cublas/lib 2>/dev/null | paste -sd:)
export LD_LIBRARY_PATH="$here/lib:${cublas_dirs}:${LD_LIBRARY_PATH:-}"
export SVDQ_TEST_DATA_DIR="$here/data"
filter="${SVDQ_GPU_TEST_FILTER:-*}"
# The sanitizers' subset: small cases of each kernel family, kernel 1's split-K (K = 832: S = 4
# splits, the partials and lora_reduce_kernel) and its rotation with non-finite rows (M = 20).
san_filter="${SVDQ_SANITIZER_FILTER:-*MatchesTheCpuReference/int4_bf16_r32_m44:*MatchesTheCpuReference/nvfp4_bf16_r32_m44:GpuLayerLaunch.*:*GpuVariant.MatchesTheCpuReference/int4_unsigned_bf16_r16:*GpuVariant.MatchesTheCpuReference/nvfp4_wcscales_bf16_r16:Kernel1SplitK.*:Kernel1Rotation.*}"
shapes="${SVDQ_BENCH_SHAPES:-full}"
# The steps to run: the names between commas, blanks ignored (no glob expansion).
all_steps=",tests,memcheck,racecheck,bench,svdq_bench,mlp_engine,"
IFS=, read -r -a wanted <<<"$(tr -d '[:space:]' <<<"${SVDQ_SUITE_STEPS:-$all_steps}")"
steps=","
for s in "${wanted[@]}"; do
  [ -z "$s" ] && continue
  [[ "$all_steps" == *",$s,"* ]] || { echo "run.sh: SVDQ_SUITE_STEPS: unknown step '$s' (one of $all_steps)" >&2; exit 2; }
  steps="$steps$s,"
done
declare -a rows

step() {  # step NAME LIMIT_S command...
  local name=$1 limit=$2; shift 2
  # A reused OUT must not show an earlier run's results as this one's: a step's outputs go first,
  # whether it then runs, is skipped, or is killed before writing them.
  rm -f "$out/$name.log"
  case "$name" in tests) rm -f "$out/test_gpu.json" ;; bench) rm -f "$out/bench_gpu.json" ;; esac
  if [ "$name" != start ] && [[ "$steps" != *",$name,"* ]]; then
    rows+=("$(printf '%-12s not run (SVDQ_SUITE_STEPS)' "$name")")
    return 0
  fi
  local t0=$(date +%s)
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$? t1=$(date +%s)
  rows+=("$(printf '%-12s rc=%-3s %4ss  %s' "$name" "$rc" "$((t1 - t0))" "$out/$name.log")")
  echo "[$name] rc=$rc in $((t1 - t0)) s"
  return $rc
}

{
  echo "== machine"; nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
  echo "== ldd"; for b in "$here"/bin/*; do echo "$b"; ldd "$b"; done
} >"$out/env.log" 2>&1
# The GPUs for the summary's first line, or why there are none (no nvidia-smi, no driver).
if ! gpus=$(nvidia-smi -L 2>&1) || [ -z "$gpus" ]; then gpus="none visible (nvidia-smi -L: ${gpus:-no output})"; fi
printf '%s\n' "$gpus" >"$out/gpus.txt"
if grep -q "=> not found" "$out/env.log"; then echo "a carried binary misses a library:"; grep "=> not found" "$out/env.log"; fi

run_steps() {
  step tests 150 "$here/bin/test_gpu" "--gtest_filter=$filter" "--gtest_output=json:$out/test_gpu.json"
  if command -v compute-sanitizer >/dev/null; then
    step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 3 "$here/bin/test_gpu" "--gtest_filter=$san_filter"
    step racecheck 120 compute-sanitizer --tool racecheck --error-exitcode 3 "$here/bin/test_gpu" "--gtest_filter=$san_filter"
  else
    rows+=("compute-sanitizer not on PATH: memcheck/racecheck not run")
  fi
  step bench 270 "$here/bin/bench_gpu" --shapes "$shapes" "--benchmark_out=$out/bench_gpu.json" --benchmark_out_format=json
  # The CLI's GPU timing on the DESIGN.md §5 (K, N), a few M (exit 1 if a shape fails or departs
  # from the CPU reference), then the example engine's MLP block on the GPU against its CPU layers.
  step svdq_bench 120 bash -c "rc=0; for kn in 3072x3072 3072x9216 3072x12288 12288x3072; do
    '$here/bin/svdq' bench --gpu -k \${kn%x*} -n \${kn#*x} -m '${SVDQ_CLI_BENCH_M:-1,16,256,4096}' --repeats 5 || rc=\$?; done; exit \$rc"
  step mlp_engine 60 bash -c "cd '$out' && '$here/bin/mlp_engine' make-model --model mlp.safetensors --rows mlp_rows.safetensors &&
    '$here/bin/svdq' calibrate mlp_rows.safetensors -o mlp_calib.safetensors && '$here/bin/svdq' quantize mlp.safetensors \
    -o mlp_q.safetensors --calib mlp_calib.safetensors --exclude '^embed' && '$here/bin/mlp_engine' run --model mlp.safetensors \
    --quantized mlp_q.safetensors --budget 0.08 --device gpu"

  echo
  echo "== svdq bench --gpu ($out/svdq_bench.log)"
  grep -E '^svdq bench|^ +[0-9]+ |error' "$out/svdq_bench.log" 2>/dev/null
  echo "== mlp_engine on the GPU ($out/mlp_engine.log)"
  grep -E '^MLP block|^on the GPU|^GPU vs CPU|error' "$out/mlp_engine.log" 2>/dev/null
}

# The binaries must start (libraries, --gtest_list_tests) before anything else runs; either way the
# steps table and the summary come last.
started=0
if step start 60 bash -c "'$here/bin/test_gpu' --gtest_list_tests >/dev/null && '$here/bin/bench_gpu' --benchmark_list_tests >/dev/null && '$here/bin/svdq' --version >/dev/null"; then
  started=1
  run_steps
else
  echo "the carried binaries do not start here; see $out/start.log"; cat "$out/start.log"
  rows+=("the binaries do not start: no other step run")
fi
echo
echo "== steps"
printf '%s\n' "${rows[@]}"
echo
python3 "$here/gpu_summary.py" "$out" | tee "$out/summary.txt"
[ "$started" = 1 ]  # exit status 1 when the binaries did not start
RUN
chmod +x "$dir/run.sh"
du -sh "$dir"
echo "packed: $dir (run it on the GPU machine: $dir/run.sh)"
