"""Is stagevar's own loop (preset ``none``) slower than the model's? Many short rounds, order alternated.

    python benchmarks/none_overhead.py --family infinity --width 2048 --side 16 --rounds 6
    python benchmarks/none_overhead.py --family infinity --inf-shape 8b-cpu --side 16 --rounds 4
    python benchmarks/none_overhead.py --family var --shape d16 --rounds 10

One reference model, called unpatched and accelerated with ``"none"`` (stagevar's loop, nothing
cut; bit-identical output) -- the same weights in the same memory, since at these widths the
early scales are bound by reading the weights (a deep copy of the model can read them at another
speed). Each round calls both once, the order alternating from round to round, so a drift of the
machine or a first-call effect hits both arms alike; accelerating and restoring between calls
costs milliseconds. Prints the per-call times and their medians. The long benchmarks time one round in a
fixed order (unpatched first), which cannot separate a loop overhead from the order.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import stagevar  # noqa: E402
from stagevar.models import reference_infinity, reference_var  # noqa: E402
from stagevar.tools.timing import machine_name  # noqa: E402


def build(args):
    if args.family == "infinity":
        from test_infinity import call_kwargs

        if args.inf_shape:
            b = reference_infinity(args.inf_shape, max_side=args.side)
            return b.model, call_kwargs(b, args.batch), f"Infinity '{args.inf_shape}', side {args.side}"
        b = reference_infinity("tiny", embed_dim=args.width, num_heads=max(1, args.width // 128), depth=args.depth,
                               num_block_chunks=args.depth, max_side=args.side, Ct5=64)
        return b.model, call_kwargs(b, args.batch), f"Infinity C={args.width}, {args.depth} blocks, side {args.side}"
    from conftest import gen_kwargs

    return reference_var(args.shape), gen_kwargs(args.batch, seed=0), f"VAR '{args.shape}'"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=["infinity", "var"], default="infinity")
    ap.add_argument("--inf-shape", default=None, help="an Infinity reference shape (e.g. 8b-cpu), instead of --width")
    ap.add_argument("--width", type=int, default=2048, help="Infinity embed_dim")
    ap.add_argument("--depth", type=int, default=4, help="Infinity blocks")
    ap.add_argument("--side", type=int, default=16, help="Infinity: the last scale's side")
    ap.add_argument("--shape", default="d16", help="VAR reference shape")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    model, kw, what = build(args)
    times = {"unpatched": [], "none": []}
    with torch.inference_mode():
        for r in range(args.rounds):
            order = ["unpatched", "none"]
            for arm in order if r % 2 else order[::-1]:
                if arm == "none":
                    stagevar.accelerate(model, "none")
                t0 = time.perf_counter()
                model.autoregressive_infer_cfg(**kw)
                times[arm].append(time.perf_counter() - t0)
                stagevar.restore(model)
    print(f"{what}, B={args.batch}, {args.rounds} rounds, order alternating, on {machine_name()}")
    for arm, ts in times.items():
        print(f"{arm:<10} median {statistics.median(ts) * 1e3:9.1f} ms  (min {min(ts) * 1e3:.1f}, max "
              f"{max(ts) * 1e3:.1f}); calls: {' '.join(f'{t * 1e3:.0f}' for t in ts)}")
    ratio = statistics.median(times["none"]) / statistics.median(times["unpatched"])
    print(f"none / unpatched: {ratio:.3f}")


if __name__ == "__main__":
    main()
