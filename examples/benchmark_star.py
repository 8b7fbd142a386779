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

import argparse
import json
import sys

import torch

import stagevar
from stagevar.bench import format_timing, interleaved
from stagevar.executors import EXECUTIONS
from stagevar.methods import check_executions
from stagevar.models.star import STAR_SHAPES, reference_star
from stagevar.timing import machine_name


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="d30-cpu", choices=sorted(STAR_SHAPES))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=None,
                    help="timed interleaved rounds (default: 5 on CUDA, 2 on a CPU)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls per method first")
    ap.add_argument("--execution", nargs="+", default=["eager"], choices=list(EXECUTIONS),
                    help="executors to time every method under (graphs: CUDA only)")
    ap.add_argument("--configs", nargs="+", default=["star-d30"])
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="run under torch.autocast(bfloat16), as upstream inference does")
    args = ap.parse_args()
    try:
        check_executions(args.execution, args.device)
    except stagevar.GraphsUnavailableError as e:
        sys.exit(str(e))
    if args.rounds is None:
        args.rounds = 5 if torch.device(args.device).type == "cuda" else 2
    bundle = reference_star(args.shape, device=torch.device(args.device))
    m = bundle.model
    prompts = ["a photo of a red fox standing in fresh snow, golden hour"] * args.batch
    kw = dict(B=args.batch, label_B=None, **bundle.encode(prompts), g_seed=0, cfg=4.5, top_k=600, top_p=0.8,
              more_smooth=False)
    methods = [("unpatched", None)] + [(c, stagevar.preset(c)) for c in args.configs]
    autocast = torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16)
    try:
        with torch.inference_mode(), autocast:
            rows = interleaved(m, kw, methods, args.rounds, warmup=args.warmup, executions=args.execution,
                               progress=True)
            stagevar.accelerate(m, methods[1][1])
            m.autoregressive_infer_cfg(**kw)
            print(stagevar.report(m))
    finally:
        stagevar.restore(m)
    K, side = len(m.patch_nums), m.patch_nums[-1]
    title = (f"STAR-{args.shape} reference (random weights, {len(m.blocks)} blocks, C={m.C}), schedule of {K} scales "
             f"to {side}x{side} tokens, B={args.batch}{', bf16' if args.bf16 else ''}, {args.rounds} interleaved "
             f"rounds after {args.warmup} warm-up call(s), on {machine_name(args.device)}")
    print("\n" + format_timing(title, rows), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(title=title, executions=args.execution, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
