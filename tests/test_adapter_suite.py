"""The suite every model family passes (README, "Adding a model family").

A family joins by adding a :class:`Family` entry to ``FAMILIES``: how to build a small reference
model, the generation arguments for B images, how to read images from the call's output, its
presets, and a non-square call (or why it has none).
"""
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import numpy as np
import pytest
import torch

import stagevar
from stagevar.models import reference_infinity, reference_var

from conftest import gen_kwargs


@dataclass
class Family:
    name: str
    build: Callable[[], Any]                       # -> (model, context)
    kwargs: Callable[[Any, int, int], dict]         # (context, B, seed) -> call kwargs
    images: Callable[[Any], torch.Tensor]           # call output -> image tensor
    presets: List[str]
    non_square: Optional[Callable[[Any, int, int], dict]] = None
    no_non_square: str = ""


def _var():
    return reference_var("small"), None


def _var_kwargs(_, B, seed):
    return gen_kwargs(B, seed=seed, label_B=(torch.arange(B) * 3 + seed) % 10)


def _inf():
    b = reference_infinity("tiny")
    return b.model, b


def _inf8b():
    b = reference_infinity("8b-tiny")  # Infinity-8B's patchified layout
    return b.model, b


def _inf_kwargs(b, B, seed, aspect="1:1"):
    from test_infinity import call_kwargs

    return call_kwargs(b, B, aspect, seed=seed)


def _star():
    from stagevar.models.star import reference_star

    b = reference_star("small")
    return b.model, b


def _star_kwargs(b, B, seed):
    from test_star import call_kwargs

    return call_kwargs(b, B, seed=seed)


def _hart():
    from stagevar.models.hart import reference_hart

    b = reference_hart("small")
    return b.model, b


def _hart_kwargs(b, B, seed):
    from test_hart import call_kwargs

    return call_kwargs(b, B, seed=seed)


FAMILIES = [
    Family("var", _var, _var_kwargs, lambda out: out, ["var-d16", "stagevar-tiny-var"],
           no_non_square="VAR's schedule is square by construction (patch_nums)"),
    Family("infinity", _inf, _inf_kwargs, lambda out: out[2], ["infinity-2b", "infinity-2b-paper"],
           non_square=lambda b, B, seed: _inf_kwargs(b, B, seed, "16:9")),
    Family("infinity-8b", _inf8b, _inf_kwargs, lambda out: out[2], ["infinity-8b", "infinity-8b-paper"],
           non_square=lambda b, B, seed: _inf_kwargs(b, B, seed, "16:9")),
    Family("star", _star, _star_kwargs, lambda out: out, ["star-d30", "star-d16"],
           no_non_square="STAR's schedule is square by construction (patch_nums, one RoPE table per square scale)"),
    Family("hart", _hart, _hart_kwargs, lambda out: out, ["hart-0.7b-paper", "hart-0.7b", "fastvar-hart"],
           no_non_square="HART's schedule is square by construction (patch_nums; the last scale's MaskGIT grid)"),
]


@pytest.fixture(params=FAMILIES, ids=lambda f: f.name)
def family(request):
    return request.param


def _gen(model, kw):
    # every call starts from the same global generators: upstream HART's diffusion head draws its
    # noise from torch's, its MaskGIT order from numpy's (the other families draw from neither)
    torch.manual_seed(0)
    np.random.seed(0)
    return model.autoregressive_infer_cfg(**kw)


@pytest.mark.parametrize("B", [1, 3])
def test_none_is_bit_identical_to_the_unpatched_call(family, B):
    model, ctx = family.build()
    kw = family.kwargs(ctx, B, 0)
    want = family.images(_gen(model, kw))
    with stagevar.accelerated(model, "none"):
        got = family.images(_gen(model, kw))
    assert torch.equal(got, want)


def test_presets_are_reproducible_from_the_seed(family):
    model, ctx = family.build()
    for name in family.presets:
        with stagevar.accelerated(model, name):
            a = family.images(_gen(model, family.kwargs(ctx, 2, 5)))
            b = family.images(_gen(model, family.kwargs(ctx, 2, 5)))
            c = family.images(_gen(model, family.kwargs(ctx, 2, 6)))
        assert torch.equal(a, b) and not torch.equal(a, c), name


def test_restore_is_exact(family):
    model, ctx = family.build()
    kw = family.kwargs(ctx, 2, 1)
    want = family.images(_gen(model, kw))
    stagevar.accelerate(model, family.presets[0])
    assert not torch.equal(family.images(_gen(model, kw)), want)
    stagevar.restore(model)
    assert not stagevar.is_accelerated(model)
    assert torch.equal(family.images(_gen(model, kw)), want)


def test_an_exception_mid_call_leaves_the_model_usable(family):
    model, ctx = family.build()
    kw = family.kwargs(ctx, 2, 2)
    want = family.images(_gen(model, kw))
    stagevar.accelerate(model, family.presets[0])
    adapter = getattr(model, stagevar.api._ATTR).engine.adapter
    block = adapter.blocks()[-1]
    seen = {"n": 0}

    def boom(*_):
        seen["n"] += 1
        if seen["n"] == 3:
            raise KeyboardInterrupt("stop")

    handle = block.register_forward_pre_hook(boom)
    with pytest.raises(KeyboardInterrupt):
        _gen(model, kw)
    handle.remove()
    assert all(length is None for length in adapter.cache_lengths()), "KV caches left on"
    with stagevar.accelerated(model, "none"):
        assert torch.equal(family.images(_gen(model, kw)), want)


def test_a_non_square_schedule(family):
    if family.non_square is None:
        pytest.skip(family.no_non_square)
    model, ctx = family.build()
    kw = family.non_square(ctx, 2, 3)
    want = family.images(_gen(model, kw))
    with stagevar.accelerated(model, "none"):
        assert torch.equal(family.images(_gen(model, kw)), want)
    with stagevar.accelerated(model, family.presets[0]):
        got = family.images(_gen(model, kw))
        assert stagevar.last_report(model).scales[-1].mode != "intact"
    assert got.shape == want.shape
