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

import argparse
import json
import sys

import torch

import stagevar
from stagevar.bench import format_timing, interleaved
from stagevar.executors import EXECUTIONS
from stagevar.methods import check_executions
from stagevar.models import ASPECTS, INFINITY_SHAPES, reference_infinity
from stagevar.timing import machine_name


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="2b-cpu", choices=sorted(INFINITY_SHAPES))
    ap.add_argument("--aspect", nargs="+", default=["1:1"], choices=sorted(ASPECTS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=None,
                    help="timed interleaved rounds (default: 5 on CUDA, 2 on a CPU)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed calls per method and executor first (graphs: at least 2, the eager call and the "
                         "capture)")
    ap.add_argument("--execution", nargs="+", default=["eager"], choices=list(EXECUTIONS),
                    help="executors to time every method under (graphs: CUDA only)")
    ap.add_argument("--configs", nargs="+", default=None,
                    help="presets (default: the model's preset and its -paper variant: infinity-2b, or "
                         "infinity-8b for the patchified 8b shapes)")
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
    bundle = reference_infinity(args.shape, device=torch.device(args.device))
    if args.configs is None:
        from stagevar.adapters import adapter_for

        default = adapter_for(bundle.model).default_preset
        args.configs = [default, default + "-paper"]
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
    _, H, W = sched[-1]
    title = (f"Infinity-{args.shape} reference (random weights), {aspect} schedule of {K} scales to {H}x{W} tokens, "
             f"B={args.batch}{', bf16' if args.bf16 else ''}, {args.rounds} interleaved rounds after {args.warmup} warm-up call(s), "
             f"on {machine_name(args.device)}")
    print("\n" + format_timing(title, rows), flush=True)
    return dict(title=title, executions=args.execution, rows=rows)


if __name__ == "__main__":
    main()
