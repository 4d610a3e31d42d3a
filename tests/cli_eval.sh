#!/usr/bin/env bash
# The README's path end to end (steps 2 and 3): rows -> svdq calibrate -> svdq quantize ->
# svdq eval (verdict on held-out rows, refusal of calibration rows) -> the layers run from C++
# through the prepared CPU layer (mlp_engine run uses svdq::CpuLinear).
#   cli_eval.sh SVDQ MLP_ENGINE WORKDIR
set -euo pipefail
svdq="$1" engine="$2" work="$3"
rm -rf "$work" && mkdir -p "$work" && cd "$work"

"$engine" make-model --model model.safetensors --rows rows.safetensors --heldout heldout.safetensors
"$svdq" calibrate rows.safetensors -o calib.safetensors
"$svdq" quantize model.safetensors -o q.safetensors --calib calib.safetensors --exclude '^embed' \
    | tee quantize.log
grep -q "relMSE(cal)" quantize.log
grep -q "on the calibration rows" quantize.log

# A verdict on held-out rows: both layers, their relMSE and SQNR, a total and a verdict line.
"$svdq" eval model.safetensors q.safetensors heldout.safetensors | tee eval.log
grep -Eq "^  mlp\.fc1 +384x?[0-9]*|^  mlp\.fc1 " eval.log
grep -q "^  mlp.fc2 " eval.log
grep -Eq "^total: 2 layer\(s\), pooled relMSE [0-9.e+-]+ \(SQNR [0-9.]+ dB\)" eval.log
grep -Eq "^verdict: (good|fair)" eval.log

# The relMSE that eval prints is the metric's definition: recompute it for fc2 from the table's
# SQNR column (SQNR = -10 log10 relMSE) to check the two columns agree.
awk '/^  mlp.fc2 /{rel=$4; sq=$5; d=-10*log(rel)/log(10)-sq; if (d<-0.01||d>0.01) exit 1}' eval.log

# Calibration rows are refused (the checkpoint carries their fingerprints) unless asked for.
if "$svdq" eval model.safetensors q.safetensors rows.safetensors 2>refused.log; then exit 1; fi
grep -q "were used for calibration" refused.log
"$svdq" eval model.safetensors q.safetensors rows.safetensors --allow-calibration-rows > calrows.log
grep -q "^verdict:" calrows.log

# A data-free nvfp4 checkpoint has no fingerprints: eval runs on any rows.
"$svdq" quantize model.safetensors -o q_free.safetensors --exclude '^embed' --format nvfp4 > free.log
"$svdq" eval model.safetensors q_free.safetensors rows.safetensors > free_eval.log
grep -q "^verdict:" free_eval.log

# The engine runs the quantized block from C++ through CpuLinear (--device cpu: also on a GPU machine).
"$engine" run --model model.safetensors --quantized q.safetensors --budget 0.01 --device cpu | tee run.log
grep -q "prepared CPU layers: relMSE" run.log
echo "cli_eval: all steps passed"
