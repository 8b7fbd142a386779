"""Time the reference STAR unpatched and accelerated, interleaved in one run, and print ratios.

    python examples/benchmark_star.py                              # d30-cpu, 1024^2 schedule (14 scales), B = 1
    python examples/benchmark_star.py --shape small --rounds 3     # seconds, for a quick look
    python examples/benchmark_star.py --shape d30 --bf16 --execution eager graphs   # on a GPU

The "d30-cpu" shape has STAR-d30's width (C = 1920, 30 heads, 1024-d text, 77 text tokens) with
6 blocks, on star-1024's schedule (sides 1 ... 36, 48, 64), so that a generation fits a CPU's
time. ``star-d30`` carries the authors' 30-block table; on 6 blocks it is resampled over relative
block position (``resample_units``). Per round every method runs once under every executor with
the same prompt and seed (unpatched first), after the warm-up calls (for CUDA graphs: the first
call runs eager, the second captures; neither is timed); the loop time is end-to-end minus the
VQVAE decode. Preset ``none`` is added as the reference of each executor. cfg = 4.5, top-k 600,
top-p 0.8 as in upstream's sample.py. Random weights: figures are about speed only.
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
from stagevar.models.star import STAR_SHAPES, reference_star  # noqa: E402
from stagevar.tools.timing import machine_name  # noqa: E402


def main():
    ap = _timing.parser(__doc__)
    ap.add_argument("--shape", default="d30-cpu", choices=sorted(STAR_SHAPES))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--configs", nargs="+", default=["star-d30"])
    args = _timing.parse(ap)
    bundle = reference_star(args.shape, device=torch.device(args.device))
    m = bundle.model
    prompts = ["a photo of a red fox standing in fresh snow, golden hour"] * args.batch
    kw = dict(B=args.batch, label_B=None, **bundle.encode(prompts), g_seed=0, cfg=4.5, top_k=600, top_p=0.8,
              more_smooth=False)
    methods = [("unpatched", BASELINE)] + [(c, stagevar.preset(c)) for c in args.configs]
    rows = _timing.time_with_report(m, kw, methods, args)
    K, side = len(m.patch_nums), m.patch_nums[-1]
    title = (f"STAR-{args.shape} reference (random weights, {len(m.blocks)} blocks, C={m.C}), schedule of {K} scales "
             f"to {side}x{side} tokens, B={args.batch}{', bf16' if args.bf16 else ''}, {args.rounds} interleaved "
             f"rounds after {args.warmup} warm-up call(s), on {machine_name(args.device)}")
    print("\n" + format_timing(title, rows), flush=True)
    _timing.write_json(args.json, dict(title=title, executions=args.execution, rows=rows))


if __name__ == "__main__":
    main()
