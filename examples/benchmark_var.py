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

import argparse
import json
import sys
import warnings

import torch

import stagevar
from stagevar.bench import format_timing, interleaved
from stagevar.executors import EXECUTIONS
from stagevar.methods import check_executions
from stagevar.models import VAR_SHAPES, reference_var
from stagevar.timing import machine_name


def methods(shape: str, config: str | None):
    default = stagevar.preset(config or (f"var-{shape}" if f"var-{shape}" in stagevar.presets() else "var-d16"))
    return [
        ("unpatched", None),
        ("none (loop overhead)", stagevar.preset("none")),
        ("cache_condition only (exact)", stagevar.preset("none").replace(cache_condition=True, name="cache-only")),
        (default.name, default),
        (f"{default.name} w/o cache_condition", default.replace(cache_condition=False, name=default.name + "-nocache")),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="d16", choices=sorted(VAR_SHAPES))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=5, help="timed interleaved rounds")
    ap.add_argument("--execution", nargs="+", default=["eager"], choices=list(EXECUTIONS),
                    help="executors to time every method under (graphs: CUDA only)")
    ap.add_argument("--config", default=None, help="preset name (default: the shape's preset)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="run under torch.autocast(bfloat16), as upstream inference does")
    args = ap.parse_args()
    try:
        check_executions(args.execution, args.device)
    except stagevar.GraphsUnavailableError as e:
        sys.exit(str(e))
    warnings.simplefilter("ignore", stagevar.NoAccelerationWarning)  # "cache-only" accelerates no scale, knowingly
    results = []
    autocast = torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16)
    with torch.inference_mode(), autocast:
        for B in args.batch:
            var = reference_var(args.shape, device=torch.device(args.device))
            labels = (torch.arange(B) * 97 % var.num_classes).to(args.device)
            kw = dict(B=B, label_B=labels, g_seed=0, cfg=4.0, top_k=900, top_p=0.95)
            rows = interleaved(var, kw, methods(args.shape, args.config), args.rounds, executions=args.execution)
            device = machine_name(args.device)
            print("\n" + format_timing(f"VAR-{args.shape} reference (random weights), B={B}{', bf16' if args.bf16 else ''}, "
                                       f"{args.rounds} interleaved rounds after the warm-up, on {device}", rows))
            results.append(dict(shape=args.shape, batch=B, repeats=args.rounds, bf16=args.bf16,
                                executions=args.execution, device=device, rows=rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
