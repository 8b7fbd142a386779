"""Time the reference Infinity unpatched and accelerated, interleaved in one run, and print ratios.

    python examples/benchmark_infinity.py                              # 2b-cpu, 1:1 1024^2 schedule, B = 1
    python examples/benchmark_infinity.py --aspect 16:9 --rounds 1
    python examples/benchmark_infinity.py --aspect 1:1 16:9           # one model build, both schedules
    python examples/benchmark_infinity.py --shape tiny --rounds 3      # seconds, for a quick look
    python examples/benchmark_infinity.py --shape 8b-cpu --aspect 1:1 16:9   # infinity-8b and infinity-8b-paper
    python examples/benchmark_infinity.py --shape 2b --bf16 --execution eager graphs   # on a GPU
    python examples/benchmark_infinity.py --shape 2b --bf16 --execution eager graphs --real-use 24   # real use

The "2b-cpu" shape has Infinity-2B's width (C = 2048, 16 heads, 2048-d text) with 8 blocks
(one per chunk) so that a 13-scale 1024^2 generation fits a CPU's time; "8b-cpu" has
Infinity-8B's width and layout (C = 3584, 28 heads, patchified tokens on a VAE grid twice the
token grid) with 4 blocks. Per round every method
runs once under every executor with the same prompt and seed (unpatched first), after the
warm-up calls (for CUDA graphs: the first call runs eager, the second captures; neither is
timed); the loop time is end-to-end minus the VAE decode. Preset ``none`` is added as the
reference of each executor. cfg = 4 on every scale, tau = 0.5, top_p = 0.97 as in upstream's
inference script. Random weights: figures are about speed only.

``--real-use N``: N prompts of N different lengths (3 to 60 words), each its own call, with a
fixed prompt's call after every third, under the first config and every executor: per executor
the median per call over the varied prompts and over the fixed one, and the share of graphed
calls that replayed (text buckets at their default under graphs). Every call is warmed once first.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _timing  # noqa: E402

import stagevar  # noqa: E402
from stagevar.tools.runner import BASELINE, arms_for, run_interleaved  # noqa: E402
from stagevar.tools.bench import format_timing  # noqa: E402
from stagevar.models import ASPECTS, INFINITY_SHAPES, reference_infinity  # noqa: E402
from stagevar.tools.timing import machine_name  # noqa: E402


def main():
    ap = _timing.parser(__doc__)
    ap.add_argument("--shape", default="2b-cpu", choices=sorted(INFINITY_SHAPES))
    ap.add_argument("--aspect", nargs="+", default=["1:1"], choices=sorted(ASPECTS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--real-use", type=int, default=0, metavar="N",
                    help="N prompts of different lengths instead of one (see above)")
    ap.add_argument("--configs", nargs="+", default=None,
                    help="presets (default: the model's preset and its -paper variant: infinity-2b, or "
                         "infinity-8b for the patchified 8b shapes)")
    ap.add_argument("--min-free-gib", type=float, default=0.0,
                    help="on CUDA: skip (saying so) where less device memory than this is free")
    args = _timing.parse(ap)
    if torch.device(args.device).type == "cuda" and args.min_free_gib:
        free = torch.cuda.mem_get_info(torch.device(args.device))[0] / 2 ** 30
        if free < args.min_free_gib:
            why = f"skipped: {free:.1f} GiB free on the device, this run needs about {args.min_free_gib:.0f} GiB"
            print(why)
            _timing.write_json(args.json, dict(skipped=why, rows=[]))
            return
    bundle = reference_infinity(args.shape, device=torch.device(args.device))
    if args.configs is None:
        from stagevar.adapters import adapter_for

        default = adapter_for(bundle.model).default_preset
        args.configs = [default, default + "-paper"]
    results = []
    for aspect in args.aspect:
        results.append(real_use(bundle, aspect, args) if args.real_use else run_aspect(bundle, aspect, args))
        _timing.write_json(args.json, results if len(results) > 1 else results[0])  # what is measured so far


FIXED = "a photo of a red fox standing in fresh snow, golden hour"
WORDS = ("a photo of an old lighthouse on a rocky cliff above a stormy grey sea at dusk with gulls circling the lamp "
         "and waves breaking on black stones while a fishing boat heads home under low clouds and the first stars "
         "appear over the hills behind a small village of white houses").split()


def _kwargs(bundle, sched, prompt: str, B: int) -> dict:
    K = len(sched)
    return dict(vae=bundle.vae, scale_schedule=sched, label_B_or_BLT=bundle.encode([prompt] * B), B=B, g_seed=0,
                cfg_list=[4.0] * K, tau_list=[0.5] * K, top_k=900, top_p=0.97, ret_img=True, cfg_insertion_layer=[0])


def real_use(bundle, aspect: str, args) -> dict:
    """Prompts of many lengths, one call each, and a fixed prompt every third call (see above)."""
    m = bundle.model
    sched = bundle.schedule(aspect)
    n = args.real_use
    lengths = [3 + (57 * i) // max(1, n - 1) for i in range(n)]  # 3 .. 60 words, all different for n <= 58
    batches, fixed = [], []
    for i, length in enumerate(lengths):
        batches.append(_kwargs(bundle, sched, " ".join(WORDS[:length]), args.batch))
        if i % 3 == 2:
            fixed.append(len(batches))
            batches.append(_kwargs(bundle, sched, FIXED, args.batch))
    config = args.configs[0]
    arms = arms_for([(config, stagevar.preset(config))], args.execution)
    with _timing.precision(args):
        result = run_interleaved(m, arms, batches, rounds=args.rounds, warmup=1, warm_every_batch=True, progress=True)
    rows = []
    for i, arm in enumerate(arms):
        for kind, picked in (("varied", lambda b: b not in fixed), ("fixed", lambda b: b in fixed)):
            recs = [r for r in result.of(i) if picked(r.batch)]
            wall = sorted(r.wall_s for r in recs)
            replayed = sum(1 for r in recs if r.report is not None and r.report.executor == "graphs")
            rows.append(dict(method=config, execution=arm.execution, prompts=kind, calls=len(recs),
                             e2e_ms=wall[len(wall) // 2] * 1e3, e2e_min_ms=wall[0] * 1e3, e2e_max_ms=wall[-1] * 1e3,
                             replayed=replayed, buckets=sorted({r.report.text[1] for r in recs if r.report})))
    _, H, W = sched[-1]
    title = (f"Infinity-{args.shape} reference (random weights), real use: {n} prompts of {lengths[0]}-{lengths[-1]} "
             f"words and a fixed prompt every third call, {aspect} to {H}x{W} tokens, B={args.batch}"
             f"{', bf16' if args.bf16 else ''}, {args.rounds} round(s) after one warm-up pass, "
             f"on {machine_name(args.device)}")
    print("\n" + title)
    print(f"{'method':<14} {'exec':<7} {'prompts':<8} {'calls':>5} {'median ms (min-max)':>24} {'replayed':>8}  buckets")
    for r in rows:
        print(f"{r['method']:<14} {r['execution']:<7} {r['prompts']:<8} {r['calls']:>5} "
              f"{r['e2e_ms']:>9.1f} ({r['e2e_min_ms']:.1f}-{r['e2e_max_ms']:.1f}) {r['replayed']:>8}  {r['buckets']}",
              flush=True)
    return dict(title=title, executions=args.execution, real_use=n, rows=rows)


def run_aspect(bundle, aspect: str, args) -> dict:
    m = bundle.model
    sched = bundle.schedule(aspect)
    K = len(sched)
    kw = _kwargs(bundle, sched, FIXED, args.batch)
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
