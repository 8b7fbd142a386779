"""Inputs that tell right from wrong: per-scale lists that vary by scale, prompts of different
lengths (equal totals, other splits), schedules of ten or more scales, several consecutive reduced
scales each checked, CFG mixed on hidden states (``cfg_insertion_layer < 0``)."""
import pytest
import torch

import stagevar
from stagevar.models import reference_infinity, reference_var

from test_infinity import call_kwargs


@pytest.fixture(scope="module")
def small_infinity():
    return reference_infinity("small")  # 10 scales on every aspect


def _varying(K):
    cfg = [1.0 + 0.5 * ((3 * si) % 5) for si in range(K)]  # 1.0, 2.5, 1.5, 3.0, 2.0, ...: guidance on and off
    tau = [0.6 + 0.07 * si for si in range(K)]
    return cfg, tau


@pytest.mark.parametrize("prompts, insertion", [
    (["a red fox", "a lighthouse on a cliff at dusk over the sea"], [0]),
    (["one two three four five", "six seven eight"], [-1]),       # 5 + 3 tokens
    (["one two three", "four five six seven eight"], [-1]),       # 3 + 5: the same total, another split
    (["a", "bb cc", "dd ee ff gg hh ii jj"], [0]),
])
def test_none_is_bit_identical_with_per_scale_lists_that_vary(small_infinity, prompts, insertion):
    b = small_infinity
    sched = b.schedule("16:9")
    K = len(sched)
    assert K >= 10
    cfg, tau = _varying(K)
    kw = call_kwargs(b, len(prompts), "16:9", seed=4, label_B_or_BLT=b.encode(prompts), cfg_insertion_layer=insertion,
                     top_k=7, top_p=0.9)
    kw.update(cfg_list=cfg, tau_list=tau)
    want = b.model.autoregressive_infer_cfg(**kw)[2]
    with stagevar.accelerated(b.model, "none"):
        got = b.model.autoregressive_infer_cfg(**kw)[2]
    assert torch.equal(got, want)
    # and each list is read per scale: a list shifted by one scale gives other images
    shifted = dict(kw, cfg_list=cfg[1:] + cfg[:1], tau_list=tau[1:] + tau[:1])
    with stagevar.accelerated(b.model, "none"):
        assert not torch.equal(b.model.autoregressive_infer_cfg(**shifted)[2], want)


def test_equal_totals_with_other_splits_give_other_images(small_infinity):
    b = small_infinity
    kw = call_kwargs(b, 2, seed=1)
    outs = []
    for prompts in (["one two three four five", "six seven eight"], ["one two three", "four five six seven eight"]):
        with stagevar.accelerated(b.model, "infinity-2b"):
            outs.append(b.model.autoregressive_infer_cfg(**dict(kw, label_B_or_BLT=b.encode(prompts)))[2])
    assert not torch.equal(outs[0][0], outs[1][0]) and not torch.equal(outs[0][1], outs[1][1])


def _tokens_seen(model, blocks):
    """Per block call: the token count it ran on."""
    seen = []
    hooks = [blk.register_forward_hook(lambda mod, args, kwargs, out: seen.append(kwargs.get("x", args[0] if args else None).shape[1]),
                                       with_kwargs=True) for blk in blocks]
    return seen, hooks


def test_every_consecutive_reduced_scale_runs_its_own_rank():
    """Three reduced scales with three different ratios: every block of every one of them runs on
    that scale's rank, and every one shows in the report (not only the first)."""
    var = reference_var("tiny", patch_nums=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10))
    K = len(var.patch_nums)
    config = stagevar.StageVARConfig(refine_start=-3, branch="uncond", rank_ratio=None,
                                     rank_ratios={K - 3: 0.2, K - 2: 0.35, K - 1: 0.5}, name="three-ranks")
    seen, hooks = _tokens_seen(var, var.blocks)
    try:
        with stagevar.accelerated(var, config):
            var.autoregressive_infer_cfg(B=2, label_B=torch.tensor([1, 2]), g_seed=0, cfg=3.0)
            rep = stagevar.last_report(var)
    finally:
        for h in hooks:
            h.remove()
    depth = len(var.blocks)
    per_scale = [seen[i * depth:(i + 1) * depth] for i in range(K)]
    for si, ratio in ((K - 3, 0.2), (K - 2, 0.35), (K - 1, 0.5)):
        M = var.patch_nums[si] ** 2
        r = int(ratio * M) + 1
        assert per_scale[si] == [r] * depth, (si, per_scale[si], r)
        assert "low-rank" in rep.scales[si].mode and set(rep.scales[si].tokens) == {r}
    for si in range(K - 3):
        assert per_scale[si] == [var.patch_nums[si] ** 2] * depth
