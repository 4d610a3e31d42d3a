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
"$engine" run --model model.safetensors --quantized q_plus.safetensors --budget 0.08
"$engine" run --model model.safetensors --quantized q_free.safetensors --budget 0.25

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
