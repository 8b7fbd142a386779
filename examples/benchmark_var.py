"""Time the reference VAR unpatched and accelerated, interleaved in one run, and print ratios.

    python examples/benchmark_var.py                      # d16, B = 1 and 8, default preset
    python examples/benchmark_var.py --shape d30 --batch 1 --rounds 3
    python examples/benchmark_var.py --batch 1 --bf16 --execution eager graphs   # on a GPU

Per round, every method runs once under every executor on the same seed, in turn (unpatched
first), after the warm-up calls (for CUDA graphs: the first call runs eager, the second
captures; neither is timed). The transformer loop is the end-to-end call minus the VQVAE decode,
marked by a wrapper around ``fhat_to_img`` that every method shares. Ratios are medians of the
unpatched time (and of preset ``none`` under the same executor) over medians of the method's.
Random weights (residual gates ~1): figures are about speed only.
"""
from __future__ import annotations

import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _timing  # noqa: E402

import stagevar  # noqa: E402
from stagevar.tools.runner import BASELINE  # noqa: E402
from stagevar.tools.bench import format_timing, interleaved  # noqa: E402
from stagevar.models import VAR_SHAPES, reference_var  # noqa: E402
from stagevar.tools.timing import machine_name  # noqa: E402


def methods(shape: str, config: str | None):
    default = stagevar.preset(config or (f"var-{shape}" if f"var-{shape}" in stagevar.preset_names() else "var-d16"))
    return [
        ("unpatched", BASELINE),
        ("none (loop overhead)", stagevar.preset("none")),
        ("cache_condition only (exact)", stagevar.preset("none").replace(cache_condition=True, name="cache-only")),
        (default.name, default),
        (f"{default.name} w/o cache_condition", default.replace(cache_condition=False, name=default.name + "-nocache")),
    ]


def main():
    ap = _timing.parser(__doc__, rounds=5)
    ap.add_argument("--shape", default="d16", choices=sorted(VAR_SHAPES))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--config", default=None, help="preset name (default: the shape's preset)")
    args = _timing.parse(ap)
    warnings.simplefilter("ignore", stagevar.NoAccelerationWarning)  # "cache-only" accelerates no scale, knowingly
    results = []
    with _timing.precision(args):
        for B in args.batch:
            var = reference_var(args.shape, device=torch.device(args.device))
            labels = (torch.arange(B) * 97 % var.num_classes).to(args.device)
            kw = dict(B=B, label_B=labels, g_seed=0, cfg=4.0, top_k=900, top_p=0.95)
            rows = interleaved(var, kw, methods(args.shape, args.config), args.rounds, warmup=args.warmup,
                               executions=args.execution)
            device = machine_name(args.device)
            print("\n" + format_timing(f"VAR-{args.shape} reference (random weights), B={B}{', bf16' if args.bf16 else ''}, "
                                       f"{args.rounds} interleaved rounds after the warm-up, on {device}", rows))
            results.append(dict(shape=args.shape, batch=B, repeats=args.rounds, bf16=args.bf16,
                                executions=args.execution, device=device, rows=rows))
            _timing.write_json(args.json, results)  # what is measured so far: a cut-off run keeps it


if __name__ == "__main__":
    main()
