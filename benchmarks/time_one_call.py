"""One accelerated call on the 2b-cpu reference Infinity at 1024^2, timed: an A/B of two trees.

    PYTHONPATH=/path/to/tree python benchmarks/time_one_call.py [PRESET]

run alternately from each tree (e.g. a git worktree of an older commit and this one), one process per
call; prints which package ran, the call's wall time and the report's per-scale loop times.
"""
import sys
import time

import torch

import stagevar
from stagevar.models import reference_infinity
torch.manual_seed(0)
b = reference_infinity("2b-cpu")
sched = b.schedule("1:1"); K = len(sched)
kw = dict(vae=b.vae, scale_schedule=sched, label_B_or_BLT=b.encode(["a red fox in the snow"]), B=1, g_seed=0,
          cfg_list=[3.0] * K, tau_list=[1.0] * K, top_k=900, top_p=0.97, ret_img=True)
stagevar.accelerate(b.model, sys.argv[1] if len(sys.argv) > 1 else "infinity-2b")
with torch.no_grad():
    t = time.perf_counter(); b.model.autoregressive_infer_cfg(**kw); dt = time.perf_counter() - t
rep = stagevar.last_report(b.model)
print(f"{stagevar.__file__}: {dt:.1f} s; loop per scale ms:", [round(s.time_s * 1e3) for s in rep.scales])
