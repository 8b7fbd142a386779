"""Time the reference VAR unpatched and accelerated, interleaved in one run, and print ratios.

    python examples/benchmark_var.py                      # d16, B = 1 and 8, default preset
    python examples/benchmark_var.py --shape d30 --batch 1 --repeats 3

Per round, every method runs once on the same seed, in turn (unpatched first), after one
warm-up round. The transformer loop is the end-to-end call minus the VQVAE decode, which is
timed by a wrapper around ``fhat_to_img`` that every method shares. Ratios are medians of the
unpatched time over medians of the method's. Random weights (residual gates ~1): figures are
about speed only.
"""
from __future__ import annotations

import argparse
import json
import warnings

import torch

import stagevar
from stagevar.bench import DecodeTimer, format_table, interleaved
from stagevar.cli import machine_name
from stagevar.models import VAR_SHAPES, reference_var


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
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--config", default=None, help="preset name (default: the shape's preset)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="run under torch.autocast(bfloat16), as upstream inference does")
    args = ap.parse_args()
    warnings.simplefilter("ignore", stagevar.NoAccelerationWarning)  # "cache-only" accelerates no scale, knowingly
    results = []
    autocast = torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16)
    with torch.inference_mode(), autocast:
        for B in args.batch:
            var = reference_var(args.shape, device=torch.device(args.device))
            timer = DecodeTimer(var.vae_proxy[0], "fhat_to_img")
            labels = (torch.arange(B) * 97 % var.num_classes).to(args.device)
            kw = dict(B=B, label_B=labels, g_seed=0, cfg=4.0, top_k=900, top_p=0.95)
            rows = interleaved(var, lambda: var.autoregressive_infer_cfg(**kw), methods(args.shape, args.config),
                               args.repeats, timer)
            print("\n" + format_table(f"VAR-{args.shape} reference (random weights), B={B}, {args.repeats} interleaved "
                                      f"rounds after 1 warm-up, on {machine_name()}", rows))
            results.append(dict(shape=args.shape, batch=B, repeats=args.repeats, device=machine_name(), rows=rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
