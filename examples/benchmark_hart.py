"""Time the reference HART unpatched and accelerated, interleaved in one run, and print ratios.

    python examples/benchmark_hart.py                                # 0.7b-cpu, 1024^2 schedule (14 scales), B = 1
    python examples/benchmark_hart.py --shape small --rounds 3       # seconds, for a quick look
    python examples/benchmark_hart.py --configs hart-0.7b hart-0.7b-paper fastvar

The "0.7b-cpu" shape has HART-0.7B's width (C = 1536, 24 heads, a 300 x 1536 Qwen2 context, the
32-channel tokenizer, the 1024-wide diffusion head with 8 steps) with 2 blocks, on HART's 1024^2
schedule (sides 1 ... 36, 48, 64; the last scale MaskGIT + diffusion head), so that a generation
fits a CPU's time. The presets carry 24-block tables; on 2 blocks they are resampled over relative
block position (``resample_units``). Per round every method runs once with the same prompt and
seed (unpatched first) after the warm-up calls; the loop time is end-to-end minus the VAE decode
(the diffusion head is inside the loop). Preset ``none`` is added as the reference. cfg = 4.5 and
``more_smooth`` as upstream's sample.py calls it. Beside the measured ratios it prints the FLOP
model's limit for each plan (the blocks only: the diffusion head, the head and the sampling are
not in it). Random weights: figures are about speed only.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _timing  # noqa: E402

import stagevar  # noqa: E402
from stagevar.tools.runner import BASELINE  # noqa: E402
from stagevar.tools.bench import format_timing  # noqa: E402
from stagevar.models.hart import HART_SHAPES, reference_hart  # noqa: E402
from stagevar.tools.timing import machine_name  # noqa: E402


def flop_limits(model, kw, configs, args) -> dict:
    """Per config, the FLOP model of the unpatched call's blocks over the config's (one call each)."""
    gflops = {}
    with _timing.precision(args):
        for name in ["none"] + list(configs):
            with stagevar.accelerated(model, name, execution="eager"):
                model.autoregressive_infer_cfg(**kw)
                gflops[name] = stagevar.last_report(model).gflops
    return {name: gflops["none"] / g for name, g in gflops.items() if name != "none"}


def main():
    ap = _timing.parser(__doc__)
    ap.add_argument("--shape", default="0.7b-cpu", choices=sorted(HART_SHAPES))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--configs", nargs="+", default=["hart-0.7b"])
    args = _timing.parse(ap)
    bundle = reference_hart(args.shape, device=torch.device(args.device))
    m = bundle.model
    prompts = ["a photo of a red fox standing in fresh snow, golden hour"] * args.batch
    kw = dict(B=args.batch, **bundle.encode(prompts), g_seed=0, cfg=4.5, more_smooth=True)
    methods = [("unpatched", BASELINE)] + [(c, stagevar.preset(c)) for c in args.configs]
    rows = _timing.time_with_report(m, kw, methods, args)
    limits = flop_limits(m, kw, args.configs, args)
    K, side = len(m.patch_nums), m.patch_nums[-1]
    title = (f"HART-{args.shape} reference (random weights, {len(m.blocks)} blocks, C={m.C}, text {m.context_token} "
             f"tokens), schedule of {K} scales to {side}x{side} tokens, B={args.batch}{', bf16' if args.bf16 else ''}, "
             f"{args.rounds} interleaved rounds after {args.warmup} warm-up call(s), on {machine_name(args.device)}")
    print("\n" + format_timing(title, rows), flush=True)
    for name, limit in limits.items():
        print(f"FLOP model of the blocks, unpatched / {name}: {limit:.2f}x (the limit of the loop's speedup if only "
              f"the blocks cost time)")
    _timing.write_json(args.json, dict(title=title, executions=args.execution, rows=rows, flop_limits=limits))


if __name__ == "__main__":
    main()
