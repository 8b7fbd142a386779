#!/usr/bin/env bash
# stagevar's adapters against the upstream model code, on a CPU (not part of CI):
#   bash benchmarks/upstream/check_all.sh /path/to/FoundationVision/Infinity /path/to/Davinci-XLab/STAR-T2I [/path/to/mit-han-lab/hart]
# Infinity: "none" bit-identical to upstream's own call (fp32 and bf16 autocast, B=1/3, both CFG
# insertion points, two aspect ratios, the 2B layout and apply_spatial_patchify=1 as Infinity-8B is
# built), and the 8B presets on upstream's blocks. STAR: the same for STAR-T2I, its presets and the
# masked sampler's refusal. HART (optional third checkout; needs transformers==4.42.2 and scipy, in
# $HART_PYTHON or $PYTHON): "none" bit-identical with the global generators' states, its presets, restore,
# upstream's position cache (benchmarks/upstream/hart_suite.py), checked at mit-han-lab/hart e28a41f. Checked at FoundationVision/Infinity 4c27bbb and Davinci-XLab/STAR-T2I
# 4ae4492 (git clone each; git checkout that commit). Each prints one line per case; the exit status is non-zero on any FAIL.
set -euo pipefail
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 INFINITY_CHECKOUT STAR_CHECKOUT [HART_CHECKOUT]" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python}"
status=0
echo "== FoundationVision/Infinity ($1)"
"$python" "$here/infinity_autocast.py" --upstream "$1" || status=1
echo "== Davinci-XLab/STAR-T2I ($2)"
"$python" "$here/star_suite.py" --upstream "$2" || status=1
if [ $# -eq 3 ]; then
  echo "== mit-han-lab/hart ($3)"
  "${HART_PYTHON:-$python}" "$here/hart_suite.py" --upstream "$3" || status=1
fi
exit $status
