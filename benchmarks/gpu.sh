#!/usr/bin/env bash
# One call on a lent GPU machine (python3 there holds a CUDA PyTorch): the test suite, CUDA tests
# included, then the interleaved benchmarks at the VAR-d16, VAR-d30 and Infinity-2B shapes under
# bf16 autocast, `stagevar bench` (time, FLOPs, CUDA peak memory) at VAR-d16, B = 8, and the
# demo and calibration commands on CUDA.
# Each step has its own time limit; the whole took under 5 minutes on one H100.
# Everything printed goes to $OUT/log.txt (when OUT is set) and the JSON results beside it.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp}"
log="$out/log.txt"
py=python3
quiet() { grep -v 'call/s' ; }  # drop progress-bar lines
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"
  echo "== tests"; timeout 60 $py -m pytest -q -p no:cacheprovider tests/ 2>&1 | tail -4
  echo "== VAR-d16"; timeout 45 $py examples/benchmark_var.py --shape d16 --batch 1 8 --repeats 5 --bf16 --json "$out/var_d16.json" 2>&1
  echo "== VAR-d30"; timeout 100 $py examples/benchmark_var.py --shape d30 --batch 1 8 --repeats 3 --bf16 --json "$out/var_d30.json" 2>&1
  echo "== Infinity-2B"; timeout 110 $py examples/benchmark_infinity.py --shape 2b --aspect 1:1 16:9 --repeats 3 --bf16 --json "$out/inf_2b.json" 2>&1 | quiet
  echo "== stagevar bench VAR-d16 B=8 (fp32)"; timeout 40 $py -m stagevar bench --model var --shape d16 --batch 8 --repeats 3 --top-k 900 --top-p 0.95 --out '' --quiet 2>&1
  echo "== demo and calibrate on CUDA"; (cd "$out" && timeout 30 $py -m stagevar demo --repeats 2 2>&1 | grep -v '^ *[0-9]' && rm -f stagevar_demo.png)
  timeout 30 $py -m stagevar calibrate --model var --shape small --out /tmp/cal.json 2>&1 | tail -3
  echo "== done"
} 2>&1 | tee "$log"
