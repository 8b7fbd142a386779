"""Where the time goes on a GPU: torch.profiler over one unpatched and one accelerated call.

    python benchmarks/gpu_profile.py                     # Infinity 2b-cpu (1024^2) and VAR-d16, B = 1
    python benchmarks/gpu_profile.py --inf-shape tiny --var-shape tiny --device cpu

Prints, per model and method: the wall time of the profiled call, the number of operator and
kernel launches, the host-device synchronisations and copies the CUDA runtime saw, and the
operators with the most host time. Random weights: about overhead and speed only.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import stagevar
from stagevar.models import reference_infinity, reference_var

SYNC_NAMES = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize")
COPY_NAMES = ("cudaMemcpyAsync", "cudaMemcpy")


def profile_call(label: str, call, device: torch.device, top: int) -> None:
    call()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t = time.perf_counter()
    with profile(activities=acts) as prof:
        call()
        if device.type == "cuda":
            torch.cuda.synchronize()
    wall = time.perf_counter() - t
    ev = prof.key_averages()
    count = {e.key: e.count for e in ev}
    launches = sum(c for k, c in count.items() if k in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel"))
    ops = sum(e.count for e in ev if e.key.startswith("aten::"))
    syncs = {k: count[k] for k in SYNC_NAMES if k in count}
    copies = {k: count[k] for k in COPY_NAMES if k in count}
    print(f"\n== {label}: {wall * 1e3:.0f} ms profiled; aten ops {ops}, kernel launches {launches}, "
          f"syncs {syncs or 0}, copies {copies or 0}")
    print(ev.table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=38))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inf-shape", default="2b-cpu")
    ap.add_argument("--var-shape", default="d16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    dev = torch.device(args.device)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16)
    with torch.inference_mode(), autocast:
        var = reference_var(args.var_shape, device=dev)
        kw = dict(B=1, label_B=torch.tensor([3], device=dev), g_seed=0, cfg=4.0, top_k=900, top_p=0.95)
        for cfg in (None, "var-d16"):
            stagevar.restore(var)
            if cfg:
                stagevar.accelerate(var, cfg)
            profile_call(f"VAR-{args.var_shape} {cfg or 'unpatched'}", lambda: var.autoregressive_infer_cfg(**kw), dev,
                         args.top)
        stagevar.restore(var)
        b = reference_infinity(args.inf_shape, device=dev)
        sched = b.schedule("1:1")
        K = len(sched)
        kw = dict(vae=b.vae, scale_schedule=sched, label_B_or_BLT=b.encode(["a red fox in the snow"]), B=1, g_seed=0,
                  cfg_list=[4.0] * K, tau_list=[0.5] * K, top_k=900, top_p=0.97, ret_img=True)
        for cfg in (None, "infinity-2b"):
            stagevar.restore(b.model)
            if cfg:
                stagevar.accelerate(b.model, cfg)
            profile_call(f"Infinity-{args.inf_shape} {cfg or 'unpatched'}", lambda: b.model.autoregressive_infer_cfg(**kw),
                         dev, args.top)
            if cfg:
                print(stagevar.last_report(b.model))


if __name__ == "__main__":
    main()
