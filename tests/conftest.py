import pytest
import torch

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
