#!/usr/bin/env bash
# One call on a lent GPU machine (python3 there holds a CUDA PyTorch): about 5 minutes when each step
# runs as measured, at most the sum of the step timeouts (525 s) when every step runs out.
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
step() { echo; echo "== $1 ($(date +%T))"; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"
  step "CUDA tests"
  timeout 100 $py -m pytest -q -p no:cacheprovider -m cuda tests/ 2>&1 | tail -6
  step "Infinity-2B shape 1024^2 B=1"
  timeout 100 $py examples/benchmark_infinity.py --shape 2b --aspect 1:1 --batch 1 --bf16 --rounds 5 \
    --execution eager graphs --json "$out/inf_2b_b1.json" 2>&1
  step "VAR-d16 B=1"
  timeout 45 $py examples/benchmark_var.py --shape d16 --batch 1 --bf16 --rounds 5 --execution eager graphs \
    --json "$out/var_d16_b1.json" 2>&1
  step "VAR-d16 B=8 and B=64"
  timeout 60 $py examples/benchmark_var.py --shape d16 --batch 8 64 --bf16 --rounds 5 --execution eager graphs \
    --json "$out/var_d16_b8_64.json" 2>&1
  step "Infinity-2B shape 1024^2 B=4, and 16:9 B=1"
  timeout 100 $py examples/benchmark_infinity.py --shape 2b --aspect 1:1 --batch 4 --bf16 --rounds 5 \
    --execution eager graphs --json "$out/inf_2b_b4.json" 2>&1
  timeout 60 $py examples/benchmark_infinity.py --shape 2b --aspect 16:9 --batch 1 --bf16 --rounds 5 \
    --execution eager graphs --json "$out/inf_2b_169.json" 2>&1
  step "VAR-d30 B=8"
  timeout 60 $py examples/benchmark_var.py --shape d30 --batch 8 --bf16 --rounds 5 --execution eager graphs \
    --json "$out/var_d30_b8.json" 2>&1
  step "done"
} 2>&1 | tee "$log"
