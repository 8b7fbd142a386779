"""Time the reference Infinity unpatched and accelerated, interleaved in one run, and print ratios.

    python examples/benchmark_infinity.py                              # 2b-cpu, 1:1 1024^2 schedule, B = 1
    python examples/benchmark_infinity.py --aspect 16:9 --rounds 1
    python examples/benchmark_infinity.py --aspect 1:1 16:9           # one model build, both schedules
    python examples/benchmark_infinity.py --shape tiny --rounds 3      # seconds, for a quick look
    python examples/benchmark_infinity.py --shape 8b-cpu --aspect 1:1 16:9   # infinity-8b and infinity-8b-paper
    python examples/benchmark_infinity.py --shape 2b --bf16 --execution eager graphs   # on a GPU

The "2b-cpu" shape has Infinity-2B's width (C = 2048, 16 heads, 2048-d text) with 8 blocks
(one per chunk) so that a 13-scale 1024^2 generation fits a CPU's time; "8b-cpu" has
Infinity-8B's width and layout (C = 3584, 28 heads, patchified tokens on a VAE grid twice the
token grid) with 4 blocks. Per round every method
runs once under every executor with the same prompt and seed (unpatched first), after the
warm-up calls (for CUDA graphs: the first call runs eager, the second captures; neither is
timed); the loop time is end-to-end minus the VAE decode. Preset ``none`` is added as the
reference of each executor. cfg = 4 on every scale, tau = 0.5, top_p = 0.97 as in upstream's
inference script. Random weights: figures are about speed only.
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
from stagevar.models import ASPECTS, INFINITY_SHAPES, reference_infinity  # noqa: E402
from stagevar.tools.timing import machine_name  # noqa: E402


def main():
    ap = _timing.parser(__doc__)
    ap.add_argument("--shape", default="2b-cpu", choices=sorted(INFINITY_SHAPES))
    ap.add_argument("--aspect", nargs="+", default=["1:1"], choices=sorted(ASPECTS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--configs", nargs="+", default=None,
                    help="presets (default: the model's preset and its -paper variant: infinity-2b, or "
                         "infinity-8b for the patchified 8b shapes)")
    args = _timing.parse(ap)
    bundle = reference_infinity(args.shape, device=torch.device(args.device))
    if args.configs is None:
        from stagevar.adapters import adapter_for

        default = adapter_for(bundle.model).default_preset
        args.configs = [default, default + "-paper"]
    results = []
    for aspect in args.aspect:
        results.append(run_aspect(bundle, aspect, args))
    _timing.write_json(args.json, results if len(results) > 1 else results[0])


def run_aspect(bundle, aspect: str, args) -> dict:
    m = bundle.model
    sched = bundle.schedule(aspect)
    K = len(sched)
    prompts = ["a photo of a red fox standing in fresh snow, golden hour"] * args.batch
    kw = dict(vae=bundle.vae, scale_schedule=sched, label_B_or_BLT=bundle.encode(prompts), B=args.batch, g_seed=0,
              cfg_list=[4.0] * K, tau_list=[0.5] * K, top_k=900, top_p=0.97, ret_img=True, cfg_insertion_layer=[0])
    methods = [("unpatched", BASELINE)] + [(c, stagevar.preset(c)) for c in args.configs]
    rows = _timing.time_with_report(m, kw, methods, args)
    _, H, W = sched[-1]
    title = (f"Infinity-{args.shape} reference (random weights), {aspect} schedule of {K} scales to {H}x{W} tokens, "
             f"B={args.batch}{', bf16' if args.bf16 else ''}, {args.rounds} interleaved rounds after {args.warmup} warm-up call(s), "
             f"on {machine_name(args.device)}")
    print("\n" + format_timing(title, rows), flush=True)
    return dict(title=title, executions=args.execution, rows=rows)


if __name__ == "__main__":
    main()
