#!/usr/bin/env bash
# End to end: the svdq command on a model made by the example engine, then the engine runs it.
#   cli_e2e.sh SVDQ MLP_ENGINE WORKDIR
set -euo pipefail
svdq="$1" engine="$2" work="$3"
rm -rf "$work" && mkdir -p "$work" && cd "$work"

"$engine" make-model --model model.safetensors --rows rows.safetensors
"$svdq" calibrate rows.safetensors -o calib.safetensors
"$svdq" quantize model.safetensors -o q_plus.safetensors --calib calib.safetensors \
        --exclude '^embed' --plus | tee quantize.log
grep -q "svdq-plus" quantize.log
grep -q "    recipe .* cross-validated on" quantize.log
"$svdq" quantize model.safetensors -o q_free.safetensors --exclude '^embed' --format nvfp4 | tee free.log
grep -q "data-free" free.log
"$svdq" inspect q_plus.safetensors | tee inspect.log
grep -q "mlp.fc1 .*int4" inspect.log
grep -q "mlp.fc2 .*int4" inspect.log
grep -q "    compared: data-free" inspect.log
# On a GPU the block runs there (and is checked against the CPU layers); without one (or without
# CUDA in the build) one line on stderr says why, and the CPU layers run.
"$engine" run --model model.safetensors --quantized q_plus.safetensors --budget 0.08 2>engine.err | tee engine.log
grep -q "on the GPU" engine.log || { grep -q "^mlp_engine: .*: running the block on the CPU$" engine.err &&
                                     grep -q "prepared CPU layers" engine.log; }
[ "$(wc -l <engine.err)" -le 1 ]
# --device gpu: the GPU, or an error naming why not (never a silent fallback).
if "$engine" run --model model.safetensors --quantized q_plus.safetensors --budget 0.08 --device gpu \
     >gpu.log 2>gpu.err; then
  grep -q "on the GPU" gpu.log
else
  grep -q "^mlp_engine: error: not supported: --device gpu: " gpu.err
  ! grep -q "MLP block" gpu.log
fi
"$engine" run --model model.safetensors --quantized q_free.safetensors --budget 0.25
# Block-Hadamard rotation (docs/formats.md 6.3): written as format 2.0, shown by inspect, run by
# the engine's prepared CPU layers.
"$svdq" quantize model.safetensors -o q_rot.safetensors --calib calib.safetensors --exclude '^embed' \
        --rotate | tee rot.log
grep -q "svdquant+rot" rot.log
"$svdq" inspect q_rot.safetensors | grep -q "    rotation block-hadamard"
"$engine" run --model model.safetensors --quantized q_rot.safetensors --budget 0.08

# Errors are clear and exit non-zero: a missing file, a file that is not safetensors, a shape
# that no group divides (skipped with a reason), an unknown format.
if "$svdq" inspect missing.safetensors 2>err.log; then exit 1; fi
echo "not a safetensors file" > bad.safetensors
if "$svdq" inspect bad.safetensors 2>err.log; then exit 1; fi
grep -q "error" err.log
if "$svdq" quantize model.safetensors -o x.safetensors --format int8 2>err.log; then exit 1; fi
"$svdq" quantize model.safetensors -o odd.safetensors --include 'norm' > odd.log 2>&1 && exit 1
grep -q "not a 2-D float tensor" odd.log
echo "cli_e2e: all steps passed"
