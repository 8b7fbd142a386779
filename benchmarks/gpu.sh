#!/usr/bin/env bash
# One call on a lent GPU machine (python3 there holds a CUDA PyTorch): the test suite, CUDA tests
# included, then the interleaved benchmarks at the VAR-d16, VAR-d30 and Infinity-2B shapes under
# bf16 autocast. Sized for well under 8 minutes on one H100. Output also goes to $OUT when set.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-/tmp}"
py=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/gpu.txt"
timeout 120 $py -m pytest -q -p no:cacheprovider tests/ 2>&1 | tail -5 | tee "$out/tests.txt"
timeout 150 $py examples/benchmark_var.py --shape d16 --batch 1 8 --repeats 5 --bf16 --json "$out/var_d16.json" 2>&1 | tee "$out/var_d16.txt"
timeout 150 $py examples/benchmark_var.py --shape d30 --batch 1 8 --repeats 3 --bf16 --json "$out/var_d30.json" 2>&1 | tee "$out/var_d30.txt"
timeout 150 $py examples/benchmark_infinity.py --shape 2b --repeats 3 --bf16 --json "$out/inf_2b.json" 2>&1 | tee "$out/inf_2b.txt"
