"""A stand-in for CUDA graphs on a CPU, for testing the graph executor.

Capture runs the scale function once (its Python side effects happen, as in a real capture; the
values of the tensors it started from are put back, since a real capture runs no kernel) and
records it with the bindings it saw before and after: the call state's fields, the engine's
per-unit outputs, and every attention module's KV cache. Replay rebinds what capture saw,
re-runs the function, and writes its results into the tensors capture produced -- the fixed
addresses a real graph writes to -- then rebinds those. So a replay computes on the tensors bound
at capture, never on the current call's: an input the executor forgets to copy in is read stale.
"""
from __future__ import annotations

from typing import Any, List, Optional

import torch

from stagevar.executors import _flatten


def _attention_modules(model: torch.nn.Module) -> List[torch.nn.Module]:
    return [m for m in model.modules() if hasattr(m, "cached_k") and hasattr(m, "cached_v")]


class ReplayingBackend:
    name = "fake"

    def __init__(self, model: Optional[torch.nn.Module] = None, fail_capture: bool = False, perturb: bool = False,
                 perturb_from: int = 0):
        # the attention modules whose KV caches a capture saves: the model's, else (model=None) those of
        # the model the executor names in each capture's bindings
        self.attn = None if model is None else _attention_modules(model)
        self.fail_capture = fail_capture
        self.perturb = perturb  # make replays inexact (a backend bug the exactness check must catch)
        self.perturb_from = perturb_from  # ... from the graph captured perturb_from-th on (0: every graph)
        self.captures = self.replays = self.released = 0
        self.replaying = False

    def unavailable(self, device):
        return None

    def new_pool(self, device):
        return object()

    def reserved(self, device):
        return 0

    def _attn(self, bindings):
        return self.attn if self.attn is not None else _attention_modules(bindings.model)

    def _save(self, bindings):
        return dict(b=bindings.save(), caches=[(m.cached_k, m.cached_v) for m in self._attn(bindings)])

    def _load(self, bindings, saved):
        bindings.load(saved["b"])
        for m, (k, v) in zip(self._attn(bindings), saved["caches"]):
            m.cached_k, m.cached_v = k, v

    def capture(self, fn, pool, generators, bindings, device) -> Any:
        self.captures += 1
        if self.fail_capture:
            raise RuntimeError("operation not permitted when stream is capturing (test)")
        pre = self._save(bindings)
        inputs = []
        _flatten(pre, inputs)
        values = [t.clone() for t in inputs]
        states = [g.get_state() for g in generators]
        fn()
        post = self._save(bindings)
        for t, v in zip(inputs, values):  # a real capture runs no kernel: in-place writes never happened
            t.copy_(v)
        for g, s in zip(generators, states):  # nor draws: a registered generator is advanced by replays only
            g.set_state(s)
        return fn, bindings, pre, post, self.captures - 1

    def replay(self, graph) -> None:
        fn, bindings, pre, post, ordinal = graph
        self.replays += 1
        self.replaying = True
        try:
            self._load(bindings, pre)
            fn()
            dst, src = [], []
            _flatten(post, dst)
            _flatten(self._save(bindings), src)
            assert len(dst) == len(src), "a replay must bind the same tensors as its capture"
            for d, s in zip(dst, src):
                if d is not s:
                    d.copy_(s)
                if self.perturb and ordinal >= self.perturb_from and d.is_floating_point():
                    d.add_(0.25)
            self._load(bindings, post)
        finally:
            self.replaying = False

    def release(self) -> None:
        self.released += 1
