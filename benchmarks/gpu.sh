#!/usr/bin/env bash
# One call on a lent GPU machine (python3 there holds a CUDA PyTorch), at most 5 minutes: each step
# runs under its own timeout, cut to what is left of one 290 s deadline; a step that no longer fits is
# skipped and says so (the steps are in priority order).
# Steps in priority order; each figure is appended to $OUT/log.txt as it lands, so a cut-off run
# still keeps what it measured:
#   1. the CUDA tests (graphs exact against eager and the unpatched call, fp32 and bf16, both
#      reference models; release_graphs frees memory);
#   2. Infinity-2B shape, 1024^2, B=1: unpatched vs none / infinity-2b / infinity-2b-paper, eager
#      and graphs (targets: graphed infinity-2b >= 4x the unpatched call, >= 1.9x graphed none);
#   3. VAR-d16, B=1 (target: graphed none bit-identical and >= 3x the unpatched call);
#   4. VAR-d16 B=8 and B=64 (target at 64: graphed var-d16 >= 1.6x graphed none);
#   5. Infinity-2B B=4 (target: >= 3x graphed none) and 16:9 B=1; VAR-d30 B=8.
# Everything under bf16 autocast, as users run these models; timings after the capture call.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp}"
log="$out/log.txt"
py=python3
deadline=$(( $(date +%s) + 290 ))
step() { echo; echo "== $1 ($(date +%T))"; }
# run BUDGET_S CMD...: CMD under min(BUDGET_S, time left before the deadline); skipped under 20 s left
run() {
  local budget=$1; shift
  local left=$(( deadline - $(date +%s) ))
  if (( left < 20 )); then echo "skipped: ${left} s left of the 290 s deadline"; return 0; fi
  (( budget > left )) && budget=$left
  timeout "$budget" "$@"
  local rc=$?
  (( rc == 124 )) && echo "cut off after ${budget} s (its table prints when its rounds end)"
  return 0
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"
  step "CUDA tests (full output: cuda_tests.txt)"
  run 90 $py -m pytest -q -p no:cacheprovider -m cuda -rf tests/ > "$out/cuda_tests.txt" 2>&1
  tail -15 "$out/cuda_tests.txt"
  step "Infinity-2B shape 1024^2 B=1"
  run 90 $py examples/benchmark_infinity.py --shape 2b --aspect 1:1 --batch 1 --bf16 --rounds 5 \
    --execution eager graphs --json "$out/inf_2b_b1.json" 2>&1
  step "VAR-d16 B=1"
  run 40 $py examples/benchmark_var.py --shape d16 --batch 1 --bf16 --rounds 5 --execution eager graphs \
    --json "$out/var_d16_b1.json" 2>&1
  step "VAR-d16 B=8 and B=64"
  run 50 $py examples/benchmark_var.py --shape d16 --batch 8 64 --bf16 --rounds 5 --execution eager graphs \
    --json "$out/var_d16_b8_64.json" 2>&1
  step "Infinity-2B shape 1024^2 B=4, and 16:9 B=1"
  run 70 $py examples/benchmark_infinity.py --shape 2b --aspect 1:1 --batch 4 --bf16 --rounds 5 \
    --execution eager graphs --json "$out/inf_2b_b4.json" 2>&1
  run 50 $py examples/benchmark_infinity.py --shape 2b --aspect 16:9 --batch 1 --bf16 --rounds 5 \
    --execution eager graphs --json "$out/inf_2b_169.json" 2>&1
  step "VAR-d30 B=8"
  run 50 $py examples/benchmark_var.py --shape d30 --batch 8 --bf16 --rounds 5 --execution eager graphs \
    --json "$out/var_d30_b8.json" 2>&1
  step "done"
} 2>&1 | tee "$log"
