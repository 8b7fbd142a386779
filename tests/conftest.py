import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from stagevar import engine as _engine
from stagevar.models import reference_var

# Every test call checks each block's KV-cache length after every scale (off in production).
_engine.DEBUG_CHECKS = True


@pytest.fixture
def tiny():
    """A fresh tiny reference VAR (4 scales: 1, 2, 3, 4; 2 blocks), random weights."""
    return reference_var("tiny")


@pytest.fixture
def small():
    """A fresh small reference VAR (7 scales up to 8x8; 4 blocks)."""
    return reference_var("small")


def gen_kwargs(B, seed=0, cfg=3.0, **extra):
    kw = dict(B=B, label_B=torch.arange(B) % 10, g_seed=seed, cfg=cfg, top_k=0, top_p=0.0)
    kw.update(extra)
    return kw


def record_block_outputs(model):
    """Forward hooks on every block; returns (records, remove). records: list of (block_idx, output)."""
    records = []
    handles = [b.register_forward_hook(lambda mod, args, kwargs, out, j=j: records.append((j, out.detach().clone())),
                                       with_kwargs=True) for j, b in enumerate(model.blocks)]
    return records, lambda: [h.remove() for h in handles]


class ScaleInputs(_engine.Observer):
    """Records the input of the first unit at every scale run: ``x[si]``."""

    def __init__(self):
        self.x = {}

    def unit_input(self, st, si, u, x):
        if u == 0:
            self.x[si] = x.clone()


def edited_copy(cls, name, **methods):
    """A copy of ``cls`` with some methods replaced, as a fork that edits the upstream file has it: the
    methods are the class's own (no subclass overrides them)."""
    body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    body.update(methods, __qualname__=name)
    return type(name, cls.__bases__, body)


# -- no host traffic inside a scale ----------------------------------------------------------------
_FORBIDDEN = {"aten._local_scalar_dense.default", "aten.item.default", "aten.is_nonzero.default",
              "aten.nonzero.default", "aten.nonzero_static.default"}
# A tensor made from Python data. A 0-d one is a scalar (``x[..., -1:] = False`` in upstream's
# top-p sampler): it becomes a kernel argument of a fill, with no copy to the device; anything
# larger is host data that a device would have to receive.
_LIFTS = {"aten.lift_fresh.default", "aten.lift_fresh_copy.default"}


class _NoHostTraffic(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if name in _FORBIDDEN:
            self.seen.append(name)
        elif name in _LIFTS and args[0].dim() > 0:
            self.seen.append(f"{name} of shape {tuple(args[0].shape)}")
        elif name.startswith(("aten._to_copy", "aten.copy_", "aten.to.")):
            devices = {a.device for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)}
            target = kwargs.get("device")
            if len(devices) > 1 or (target is not None and devices and torch.device(target) not in devices):
                self.seen.append(f"{name} across devices")
        return func(*args, **kwargs)


@pytest.fixture
def watched(monkeypatch):
    """Every run_scale runs under a dispatch mode that records each operation reading a device value on
    the host, building a tensor from host data, or copying across devices (tests/test_syncfree.py);
    returns the list of those seen."""
    mode_seen = []
    real = _engine.Engine.run_scale

    def run_scale(self, call, p):
        mode = _NoHostTraffic()
        with mode:
            real(self, call, p)
        mode_seen.extend(f"scale {p.index}: {op}" for op in mode.seen)

    monkeypatch.setattr(_engine.Engine, "run_scale", run_scale)
    return mode_seen
