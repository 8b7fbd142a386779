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
import statistics
import time

import torch

import stagevar
from stagevar.cli import machine_name
from stagevar.models import VAR_SHAPES, reference_var


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class _DecodeTimer:
    """Times the VQVAE decode of each call (instance wrapper, shared by all methods)."""

    def __init__(self, vae):
        self.vae, self.inner, self.last = vae, vae.fhat_to_img, 0.0
        vae.fhat_to_img = self

    def __call__(self, f_hat):
        _sync()
        t = time.perf_counter()
        out = self.inner(f_hat)
        _sync()
        self.last = time.perf_counter() - t
        return out


def methods(shape: str, config: str | None):
    main = stagevar.preset(config) if config else None
    default = main or stagevar.preset(f"var-{shape}" if f"var-{shape}" in stagevar.presets() else "var-d16")
    return [
        ("unpatched", None),
        ("none (loop overhead)", stagevar.preset("none")),
        ("cache_condition only (exact)", stagevar.preset("none").replace(cache_condition=True, name="cache-only")),
        (f"{default.name}", default),
        (f"{default.name} w/o cache_condition", default.replace(cache_condition=False, name=default.name + "-nocache")),
    ]


def bench(shape: str, B: int, repeats: int, config: str | None, device: torch.device) -> dict:
    var = reference_var(shape, device=device)
    timer = _DecodeTimer(var.vae_proxy[0])
    labels = (torch.arange(B) * 97 % var.num_classes).to(device)
    kw = dict(B=B, label_B=labels, g_seed=0, cfg=4.0, top_k=900, top_p=0.95)
    ms = methods(shape, config)
    times = {name: {"e2e": [], "loop": []} for name, _ in ms}
    for rnd in range(repeats + 1):
        for name, cfg in ms:
            if cfg is None:
                stagevar.restore(var)
            else:
                stagevar.accelerate(var, cfg)
            _sync()
            t = time.perf_counter()
            var.autoregressive_infer_cfg(**kw)
            _sync()
            e2e = time.perf_counter() - t
            if rnd > 0:  # round 0 is warm-up
                times[name]["e2e"].append(e2e)
                times[name]["loop"].append(e2e - timer.last)
    base = {k: statistics.median(v) for k, v in times["unpatched"].items()}
    rows = []
    for name, _ in ms:
        t = times[name]
        med = {k: statistics.median(v) for k, v in t.items()}
        rows.append(dict(method=name, loop_ms=med["loop"] * 1e3, loop_min_ms=min(t["loop"]) * 1e3,
                         loop_max_ms=max(t["loop"]) * 1e3, e2e_ms=med["e2e"] * 1e3,
                         loop_speedup=base["loop"] / med["loop"], e2e_speedup=base["e2e"] / med["e2e"]))
    return dict(shape=shape, batch=B, repeats=repeats, device=machine_name(), rows=rows)


def print_result(res: dict) -> None:
    print(f"\nVAR-{res['shape']} reference (random weights), B={res['batch']}, {res['repeats']} interleaved rounds "
          f"after 1 warm-up, on {res['device']}")
    print(f"{'method':<36} {'loop ms (median, min-max)':>28} {'e2e ms':>9} {'loop x':>7} {'e2e x':>7}")
    for r in res["rows"]:
        rng = f"{r['loop_ms']:.0f} ({r['loop_min_ms']:.0f}-{r['loop_max_ms']:.0f})"
        print(f"{r['method']:<36} {rng:>28} {r['e2e_ms']:>9.0f} {r['loop_speedup']:>6.2f}x {r['e2e_speedup']:>6.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="d16", choices=sorted(VAR_SHAPES))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--config", default=None, help="preset name (default: the shape's preset)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    results = []
    with torch.inference_mode():
        for B in args.batch:
            res = bench(args.shape, B, args.repeats, args.config, torch.device(args.device))
            print_result(res)
            results.append(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
