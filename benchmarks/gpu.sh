#!/usr/bin/env bash
# One call on a lent GPU machine (python3 there holds a CUDA PyTorch), at most 5 minutes: each step
# runs under its own timeout, cut to what is left of one 290 s deadline; a step that no longer fits is
# skipped and says so (the steps are in priority order).
#   bash benchmarks/gpu.sh            # on the GPU machine: figures in $OUT (default /tmp)
#   bash benchmarks/gpu.sh --dry-run  # anywhere (a CPU too): every step's imports and arguments, the
#                                     # steps in order with their time budgets; builds and times nothing
# First one environment line (torch, CUDA, cuDNN, the card, free memory, graph-safe generators,
# flash-attn); then the steps, each figure printed as it lands and appended to $OUT/log.txt, so a
# cut-off run still keeps what it measured; last the targets, PASS / FAIL / not measured
# (benchmarks/gpu_summary.py). Steps in priority order:
#   1. the CUDA checks (python -m stagevar.tools.gpu_checks: plain Python, no pytest needed), one
#      PASS / FAIL line each as it ends, into $OUT/checks.json;
#   2. Infinity-2B shape, 1024^2, B=1: unpatched vs none / infinity-2b / infinity-2b-paper, eager
#      and graphs (targets: graphed infinity-2b <= 0.25 s, >= 4x the unpatched call, >= 2x graphed
#      none; graph pool <= 1.5x the eager call's peak allocated memory);
#   3. VAR-d16, B=1 (target: graphed none bit-identical and >= 3x the unpatched call);
#   4. real use: 24 prompts of varied lengths on the Infinity-2B shape, graphs against eager, and a
#      fixed prompt every third call (targets: within 10% of the fixed prompt, >= 2x eager);
#   5. VAR-d16 B=64 (target: graphed var-d16 >= 1.6x graphed none);
#   6. Infinity-2B B=4 where free memory allows (else skipped, saying why);
#   then, while time is left: the CUDA tests of tests/ under pytest (where pytest is installed; only
#   the test files that hold them), Infinity 16:9 B=1, VAR-d30 B=8.
# Everything under bf16 autocast, as users run these models; timings after the capture call.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
dry=0
[[ "${1:-}" == "--dry-run" ]] && dry=1
out="${OUT:-/tmp}"
mkdir -p "$out"
log="$out/log.txt"
# the python that holds torch: $PYTHON, else python3 (the GPU machine's), else this checkout's .venv
py="${PYTHON:-python3}"
if ! "$py" -c "import torch" 2>/dev/null; then
  if [[ -z "${PYTHON:-}" && -x .venv/bin/python ]] && .venv/bin/python -c "import torch" 2>/dev/null; then
    py=.venv/bin/python
  else
    echo "gpu.sh: $py cannot import torch; run it with the python that holds torch (PYTHON=/path/to/python)" >&2
    exit 2
  fi
fi
cuda_tests="tests/test_engine.py tests/test_executors.py tests/test_lowrank.py"
deadline=$(( $(date +%s) + 290 ))
failed=0
step() { echo; echo "== $1 ($(date +%T))"; }
# run BUDGET_S CMD...: CMD under min(BUDGET_S, time left before the deadline); skipped under 20 s left.
# With --dry-run: the step and its budget, and the command with --dry-run (a python step) or its imports.
run() {
  local budget=$1; shift
  if (( dry )); then
    echo "step budget ${budget} s: $*"
    if [[ "$2" == "-m" && "$3" == "pytest" ]]; then
      "$@" --collect-only -q > /dev/null 2>&1 && echo "dry run: collects" || { echo "dry run: FAILED to collect"; failed=1; }
    else
      "$@" --dry-run || failed=1
    fi
    return 0
  fi
  local left=$(( deadline - $(date +%s) ))
  if (( left < 20 )); then echo "skipped: ${left} s left of the 290 s deadline"; return 0; fi
  (( budget > left )) && budget=$left
  timeout "$budget" "$@"
  local rc=$?
  (( rc == 124 )) && echo "cut off after ${budget} s (its table prints when its rounds end)"
  return 0
}
env_line() {
  $py - <<'PY'
import importlib.util, torch
cuda = torch.cuda.is_available()
parts = [f"torch {torch.__version__}", f"CUDA {torch.version.cuda}", f"cuDNN {torch.backends.cudnn.version()}"]
if cuda:
    free, total = torch.cuda.mem_get_info()
    parts += [torch.cuda.get_device_name(0), f"free {free / 2**30:.1f} of {total / 2**30:.1f} GiB"]
else:
    parts.append("no CUDA device")
parts.append("graph-safe generators " + ("yes" if hasattr(torch.cuda.CUDAGraph, "register_generator_state") else "no"))
parts.append("flash-attn " + ("present" if importlib.util.find_spec("flash_attn") else "absent"))
parts.append("pytest " + ("present" if importlib.util.find_spec("pytest") else "absent"))
print("environment: " + ", ".join(parts))
PY
}
exec > >(tee "$log") 2>&1
env_line
step "CUDA checks (plain runner; results in checks.json)"
run 60 $py -m stagevar.tools.gpu_checks --json "$out/checks.json"
step "Infinity-2B shape 1024^2 B=1"
run 60 $py examples/benchmark_infinity.py --shape 2b --aspect 1:1 --batch 1 --bf16 --rounds 3 \
  --execution eager graphs --json "$out/inf_2b_b1.json" 2>&1
step "VAR-d16 B=1"
run 25 $py examples/benchmark_var.py --shape d16 --batch 1 --bf16 --rounds 5 --execution eager graphs \
  --json "$out/var_d16_b1.json" 2>&1
step "real use: 24 prompts of varied lengths, Infinity-2B shape 1024^2 B=1"
run 70 $py examples/benchmark_infinity.py --shape 2b --aspect 1:1 --batch 1 --bf16 --rounds 1 --real-use 24 \
  --configs infinity-2b --execution eager graphs --json "$out/inf_2b_real_use.json" 2>&1
step "VAR-d16 B=64"
run 35 $py examples/benchmark_var.py --shape d16 --batch 64 --bf16 --rounds 3 --execution eager graphs \
  --json "$out/var_d16_b8_64.json" 2>&1
step "Infinity-2B shape 1024^2 B=4 (where free memory allows)"
run 40 $py examples/benchmark_infinity.py --shape 2b --aspect 1:1 --batch 4 --bf16 --rounds 2 --min-free-gib 48 \
  --execution eager graphs --json "$out/inf_2b_b4.json" 2>&1
step "CUDA tests under pytest (full output: cuda_tests.txt)"
if $py -c "import pytest" 2>/dev/null; then
  if (( dry )); then
    run 40 $py -m pytest -q -p no:cacheprovider -m cuda -rf $cuda_tests
  else
    run 40 $py -m pytest -q -p no:cacheprovider -m cuda -rf $cuda_tests > "$out/cuda_tests.txt" 2>&1
    tail -15 "$out/cuda_tests.txt"
  fi
else
  echo "skipped: pytest is not installed here (the plain runner above ran the executor's checks)"
fi
step "Infinity-2B shape 16:9 B=1, VAR-d30 B=8 (while time is left)"
run 40 $py examples/benchmark_infinity.py --shape 2b --aspect 16:9 --batch 1 --bf16 --rounds 3 \
  --execution eager graphs --json "$out/inf_2b_169.json" 2>&1
run 40 $py examples/benchmark_var.py --shape d30 --batch 8 --bf16 --rounds 3 --execution eager graphs \
  --json "$out/var_d30_b8.json" 2>&1
step "HART-0.7B shape 1024^2 B=1, eager (its diffusion head keeps graphs off; while time is left)"
run 40 $py examples/benchmark_hart.py --shape 0.7b --batch 1 --bf16 --rounds 3 \
  --configs hart-0.7b hart-0.7b-paper fastvar-hart --execution eager --json "$out/hart_07b_b1.json" 2>&1
step "summary"
$py benchmarks/gpu_summary.py "$out"
if (( dry )); then
  (( failed )) && echo "dry run: a step FAILED its check" || echo "dry run: every step's imports and arguments ok"
fi
step "done"
exit $failed
