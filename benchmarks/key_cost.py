"""What the CUDA-graph executor spends per call to find a call's key (on any device; no graphs run).

    python benchmarks/key_cost.py            # Infinity-2B shape (2b-cpu: its width, 8 blocks) and VAR-d16

Per model: one call is set up (as a graphed call would be), then ``GraphExecutor.key`` is timed
over many repeats, with its parts: the model fingerprint (blocks, every parameter's storage, the
sampling functions; the module walk is cached until torch sees a registration) and the call
state's signature. Target: the key under 0.5 ms per call for the ``2b-cpu`` shape.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import stagevar  # noqa: E402
from stagevar.api import _ATTR  # noqa: E402
from stagevar.executors import GraphExecutor, state_signature  # noqa: E402
from stagevar.models import reference_infinity, reference_var  # noqa: E402


def _infinity(shape: str):
    bundle = reference_infinity(shape)
    sched = bundle.schedule("1:1")
    K = len(sched)
    kw = dict(vae=bundle.vae, scale_schedule=sched, label_B_or_BLT=bundle.encode(["a red fox in the snow"]), B=1,
              g_seed=0, cfg_list=[3.0] * K, tau_list=[1.0] * K, ret_img=True)
    return bundle.model, "infinity-2b", kw


def _var(shape: str):
    model = reference_var(shape)
    return model, "var-d16", dict(B=1, label_B=torch.tensor([3]), g_seed=0, cfg=4.0)


def per_call_ms(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2000)
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    status = 0
    for label, build, shape, target in (("Infinity 2b-cpu", _infinity, "2b-cpu", 0.5), ("VAR d16", _var, "d16", None)):
        model, config, kw = build(shape)
        stagevar.accelerate(model, config, execution="eager")
        engine = getattr(model, _ATTR).engine
        call = engine.setup((), kw)
        try:
            executor = GraphExecutor()
            key_ms = per_call_ms(lambda: executor.key(engine, call), args.repeats)
            fp_ms = per_call_ms(engine.adapter.fingerprint, args.repeats)
            sig_ms = per_call_ms(lambda: state_signature(call.st), args.repeats)
        finally:
            engine.end(call)
        n = sum(1 for _ in model.parameters()) + sum(1 for _ in model.buffers())
        verdict = "" if target is None else (f"  target < {target} ms: " + ("PASS" if key_ms < target else "FAIL"))
        status |= bool(target is not None and key_ms >= target)
        print(f"{label:16s} key {key_ms:.3f} ms per call (fingerprint {fp_ms:.3f} ms over {n} tensors, "
              f"state signature {sig_ms:.3f} ms){verdict}")
    return status


if __name__ == "__main__":
    sys.exit(main())
