"""Time the reference Infinity unpatched and accelerated, interleaved in one run, and print ratios.

    python examples/benchmark_infinity.py                              # 2b-cpu, 1:1 1024^2 schedule, B = 1
    python examples/benchmark_infinity.py --aspect 16:9 --repeats 1
    python examples/benchmark_infinity.py --aspect 1:1 16:9           # one model build, both schedules
    python examples/benchmark_infinity.py --shape tiny --repeats 3     # seconds, for a quick look

The "2b-cpu" shape has Infinity-2B's width (C = 2048, 16 heads, 2048-d text) with 8 blocks
(one per chunk) so that a 13-scale 1024^2 generation fits a CPU's time. Per round every method
runs once with the same prompt and seed (unpatched first), after one warm-up round; the loop
time is end-to-end minus the VAE decode. cfg = 4 on every scale, tau = 0.5, top_p = 0.97 as in
upstream's inference script. Random weights: figures are about speed only.
"""
from __future__ import annotations

import argparse
import json

import torch

import stagevar
from stagevar.bench import DecodeTimer, format_table, interleaved
from stagevar.cli import machine_name
from stagevar.models import ASPECTS, INFINITY_SHAPES, reference_infinity


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="2b-cpu", choices=sorted(INFINITY_SHAPES))
    ap.add_argument("--aspect", nargs="+", default=["1:1"], choices=sorted(ASPECTS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--configs", nargs="+", default=["infinity-2b", "infinity-2b-paper"])
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="run under torch.autocast(bfloat16), as upstream inference does")
    args = ap.parse_args()
    bundle = reference_infinity(args.shape, device=torch.device(args.device))
    results = []
    for aspect in args.aspect:
        results.append(run_aspect(bundle, aspect, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results if len(results) > 1 else results[0], f, indent=2)


def run_aspect(bundle, aspect: str, args) -> dict:
    m = bundle.model
    sched = bundle.schedule(aspect)
    K = len(sched)
    prompts = ["a photo of a red fox standing in fresh snow, golden hour"] * args.batch
    kw = dict(vae=bundle.vae, scale_schedule=sched, label_B_or_BLT=bundle.encode(prompts), B=args.batch, g_seed=0,
              cfg_list=[4.0] * K, tau_list=[0.5] * K, top_k=900, top_p=0.97, ret_img=True, cfg_insertion_layer=[0])
    timer = DecodeTimer(bundle.vae, "decode")
    methods = [("unpatched", None)] + [(c, stagevar.preset(c)) for c in args.configs]
    autocast = torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16)
    try:
        with torch.inference_mode(), autocast:
            rows = interleaved(m, lambda: m.autoregressive_infer_cfg(**kw), methods, args.repeats, timer, progress=True)
            stagevar.accelerate(m, methods[1][1])
            m.autoregressive_infer_cfg(**kw)
            print(stagevar.report(m))
    finally:
        timer.remove()
        stagevar.restore(m)
    _, H, W = sched[-1]
    title = (f"Infinity-{args.shape} reference (random weights), {aspect} schedule of {K} scales to {H}x{W} tokens, "
             f"B={args.batch}, {args.repeats} interleaved rounds after 1 warm-up, on {machine_name()}")
    print("\n" + format_table(title, rows), flush=True)
    return dict(title=title, rows=rows)


if __name__ == "__main__":
    main()
