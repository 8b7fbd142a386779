"""accelerate() on the reference VAR: equivalences a user relies on."""
import pytest
import torch
import torch.nn.functional as F

import stagevar
import stagevar.lowrank as engine_mod
import stagevar.models.var as ref_var_module
from stagevar import StageVARConfig
from stagevar.models import reference_var

from conftest import gen_kwargs, record_block_outputs


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("layout", ["BHLc", "BLHc"])
def test_none_preset_is_bit_identical(B, layout):
    var = reference_var("small", kv_layout=layout)
    kw = gen_kwargs(B, seed=5, top_k=20, top_p=0.9)
    want = var.autoregressive_infer_cfg(**kw)
    stagevar.accelerate(var, "none")
    got = var.autoregressive_infer_cfg(**kw)
    assert torch.equal(got, want)
    rep = stagevar.last_report(var)
    assert [s.mode for s in rep.scales] == ["intact"] * len(var.patch_nums)
    assert rep.token_rows == rep.intact_token_rows


def test_none_preset_bit_identical_with_unseeded_labels(small):
    kw = dict(B=2, label_B=None, g_seed=11, cfg=1.5, more_smooth=True)
    want = small.autoregressive_infer_cfg(**kw)
    with stagevar.accelerated(small, "none"):
        got = small.autoregressive_infer_cfg(**kw)
    assert torch.equal(got, want)


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("branch", ["uncond", "cond"])
def test_one_branch_rows_equal_the_2B_run(small, B, branch):
    """At the first one-branch scale the kept rows equal that branch's rows of a 2B run."""
    K = len(small.patch_nums)
    kw = gen_kwargs(B, seed=3)
    records, remove = record_block_outputs(small)
    small.autoregressive_infer_cfg(**kw)
    base = [o for j, o in records if j == len(small.blocks) - 1]
    records.clear()
    stagevar.accelerate(small, StageVARConfig(refine_start=-2, branch=branch, name="t"))
    small.autoregressive_infer_cfg(**kw)
    remove()
    acc = [o for j, o in records if j == len(small.blocks) - 1]
    assert len(base) == len(acc) == K
    for si in range(K - 2):  # intact scales: identical
        assert torch.equal(acc[si], base[si])
    t = K - 2
    kept = base[t][:B] if branch == "cond" else base[t][B:]
    assert acc[t].shape[0] == B
    torch.testing.assert_close(acc[t], kept, atol=1e-5, rtol=1e-5)
    rep = stagevar.last_report(small)
    assert [s.rows for s in rep.scales] == [2 * B] * (K - 2) + [B, B]


@pytest.mark.parametrize("B", [1, 3])
def test_every_cache_holds_B_rows_after_transition(small, B):
    K = len(small.patch_nums)
    seen = []  # (scale, block, rows in cache, tokens in cache)
    calls = {"n": 0}

    def hook(mod, args, kwargs, out, j):
        calls["n"] += 1
        k = mod.attn.cached_k
        seen.append((j, k.shape[0], k.shape[2]))

    handles = [b.register_forward_hook(lambda m, a, k, o, j=j: hook(m, a, k, o, j), with_kwargs=True)
               for j, b in enumerate(small.blocks)]
    stagevar.accelerate(small, StageVARConfig(refine_start=-3, branch="uncond", name="t"))
    small.autoregressive_infer_cfg(**gen_kwargs(B))
    for h in handles:
        h.remove()
    nblk = len(small.blocks)
    per_scale = [seen[i * nblk:(i + 1) * nblk] for i in range(K)]
    cum = 0
    for si, pn in enumerate(small.patch_nums):
        cum += pn * pn
        for j, rows, toks in per_scale[si]:
            assert rows == (2 * B if si < K - 3 else B)
            assert toks == cum


def test_full_rank_sample_reproduces_intact_scale(small):
    kw = gen_kwargs(2, seed=9)
    want = small.autoregressive_infer_cfg(**kw)
    cfg = StageVARConfig(refine_start=-2, branch="both", rank_ratio=1.0, reducer="sample", name="t")
    with pytest.warns(stagevar.NoAccelerationWarning):  # full rank computes no less: said, not silent
        stagevar.accelerate(small, cfg)
    got = small.autoregressive_infer_cfg(**kw)
    rep = stagevar.last_report(small)
    assert [s.mode for s in rep.scales][-2:] == ["low-rank", "low-rank"]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_lowrank_cache_growth_and_restoration(small, monkeypatch):
    """r < M: every cache grows by r; non-representative positions carry the previous scale's
    unit output, area-upsampled."""
    B, K = 2, len(small.patch_nums)
    ratio = 0.2
    cfg = StageVARConfig(refine_start=-2, branch="uncond", rank_ratio=ratio, unit_blocks=2, name="t")
    restores = []
    real_restore = engine_mod.restore_tokens

    def spy(prev, prev_hw, out, idx, hw):
        res = real_restore(prev, prev_hw, out, idx, hw)
        prev_map = prev.transpose(1, 2).reshape(prev.shape[0], -1, *prev_hw)
        restores.append((prev_map.clone(), out.clone(), idx.clone(), hw, res.clone()))
        return res

    monkeypatch.setattr(engine_mod, "restore_tokens", spy)
    records, remove = record_block_outputs(small)
    lengths = []
    hooks = [small.blocks[j].register_forward_hook(lambda m, a, o: lengths.append(m.attn.cached_k.shape[2]))
             for j in range(len(small.blocks))]
    stagevar.accelerate(small, cfg)
    small.autoregressive_infer_cfg(**gen_kwargs(B, seed=2))
    remove()
    for h in hooks:
        h.remove()

    nblk = len(small.blocks)
    Ms = [pn * pn for pn in small.patch_nums]
    ranks = [min(M, int(ratio * M) + 1) for M in Ms[-2:]]
    expected = []
    total = 0
    for si, M in enumerate(Ms):
        total += M if si < K - 2 else ranks[si - (K - 2)]
        expected += [total] * nblk
    assert lengths == expected
    assert all(r < M for r, M in zip(ranks, Ms[-2:]))

    # unit outputs at the scale before the refinement stage (uncond rows), one per unit of 2 blocks
    outs = [o for j, o in records]
    prev_scale = outs[(K - 3) * nblk:(K - 2) * nblk]
    unit_last = [prev_scale[1][B:], prev_scale[3][B:]]
    assert len(restores) == 2 * 2  # two low-rank scales x two units
    pn_prev, pn = small.patch_nums[K - 3], small.patch_nums[K - 2]
    for u in range(2):
        prev, out, idx, hw, res = restores[u]
        assert hw == (pn, pn)
        torch.testing.assert_close(prev, unit_last[u].transpose(1, 2).reshape(B, -1, pn_prev, pn_prev))
        up = F.interpolate(prev, size=(pn, pn), mode="area").reshape(B, prev.shape[1], -1).transpose(1, 2)
        mask = torch.ones(B, pn * pn, dtype=torch.bool)
        mask.scatter_(1, idx, False)
        torch.testing.assert_close(res[mask], up[mask])
        torch.testing.assert_close(torch.gather(res, 1, idx.unsqueeze(-1).expand(-1, -1, res.shape[-1])), out)
        assert idx.shape == (B, ranks[0])


def test_restore_gives_back_original_behaviour(small):
    kw = gen_kwargs(2, seed=4)
    want = small.autoregressive_infer_cfg(**kw)
    stagevar.accelerate(small, "var-d16")
    accel = small.autoregressive_infer_cfg(**kw)
    assert not torch.equal(accel, want)
    stagevar.restore(small)
    assert "autoregressive_infer_cfg" not in small.__dict__ and not hasattr(small, "_stagevar")
    assert torch.equal(small.autoregressive_infer_cfg(**kw), want)
    stagevar.restore(small)  # restoring twice is harmless


def test_accelerate_twice_reconfigures_instead_of_stacking(small):
    kw = gen_kwargs(1, seed=4)
    stagevar.accelerate(small, "var-d16")
    stagevar.accelerate(small, "none")
    stagevar.accelerate(small, "none")
    got = small.autoregressive_infer_cfg(**kw)
    stagevar.restore(small)
    assert torch.equal(got, small.autoregressive_infer_cfg(**kw))
    assert "autoregressive_infer_cfg" not in small.__dict__


def test_accelerate_patches_the_instance_not_the_class():
    a, b = reference_var("tiny"), reference_var("tiny")
    stagevar.accelerate(a)
    assert stagevar.is_accelerated(a) and not stagevar.is_accelerated(b)
    assert "autoregressive_infer_cfg" not in b.__dict__


def test_scoped_form_restores_earlier_config(small):
    stagevar.accelerate(small, "var-d16")
    with stagevar.accelerated(small, "none"):
        assert stagevar.current_config(small).name == "none"
    assert stagevar.current_config(small).name == "var-d16"


def test_exception_leaves_model_clean_and_usable(small):
    kw = gen_kwargs(2, seed=6)
    want = small.autoregressive_infer_cfg(**kw)
    stagevar.accelerate(small, StageVARConfig(refine_start=-2, rank_ratio=0.3, name="t"))
    blk = small.blocks[1]
    calls = {"n": 0}

    def boom(mod, args, kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("boom")

    h = blk.register_forward_pre_hook(boom, with_kwargs=True)
    with pytest.raises(RuntimeError, match="boom"):
        small.autoregressive_infer_cfg(**kw)
    h.remove()
    for b in small.blocks:
        assert not b.attn.caching and b.attn.cached_k is None and b.attn.cached_v is None
        assert type(b.ada_lin).__name__ == "Sequential"
    small.autoregressive_infer_cfg(**kw)
    stagevar.restore(small)
    assert torch.equal(small.autoregressive_infer_cfg(**kw), want)


def test_bad_call_arguments_leave_model_clean(small):
    stagevar.accelerate(small)
    with pytest.raises(ValueError, match="label_B has 2 labels but B=3"):
        small.autoregressive_infer_cfg(B=3, label_B=torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="autoregressive_infer_cfg"):
        small.autoregressive_infer_cfg(B=1, label_B=1, bogus=3)
    assert not any(b.attn.caching for b in small.blocks)


def test_same_seed_same_images_with_acceleration(small):
    stagevar.accelerate(small, StageVARConfig(refine_start=-3, rank_ratio=0.3, name="t"))
    a = small.autoregressive_infer_cfg(**gen_kwargs(3, seed=8))
    b = small.autoregressive_infer_cfg(**gen_kwargs(3, seed=8))
    c = small.autoregressive_infer_cfg(**gen_kwargs(3, seed=9))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_projection_draws_do_not_change_the_sampling_stream(monkeypatch):
    """The sampling generator's state before each scale's sampling is the same with or without
    projections, and whatever the projection seed."""
    states = []
    real = ref_var_module.sample_with_top_k_top_p_

    def spy(logits, rng=None, **kw):
        states.append(rng.get_state().clone())
        return real(logits, rng=rng, **kw)

    monkeypatch.setattr(ref_var_module, "sample_with_top_k_top_p_", spy)
    runs = []
    for cfg in ["none", StageVARConfig(refine_start=-3, rank_ratio=0.3, seed=0, name="a"),
                StageVARConfig(refine_start=-3, rank_ratio=0.3, seed=123, name="b")]:
        var = reference_var("small")
        stagevar.accelerate(var, cfg)
        states.clear()
        var.autoregressive_infer_cfg(**gen_kwargs(2, seed=1))
        runs.append(list(states))
    assert len(runs[0]) == len(runs[1]) == len(runs[2]) == len(reference_var("small").patch_nums)
    for s0, s1, s2 in zip(*runs):
        assert torch.equal(s0, s1) and torch.equal(s0, s2)


def test_default_preset_runs_and_reports(small):
    stagevar.accelerate(small)
    assert stagevar.current_config(small).name == "var-d16"
    img = small.autoregressive_infer_cfg(**gen_kwargs(2))
    assert img.shape[0] == 2 and torch.isfinite(img).all()
    rep = stagevar.last_report(small)
    d = rep.to_dict()
    assert d["scales"][-1]["mode"] == "uncond-only+low-rank" and d["scales"][-1]["rows"] == 2
    assert d["token_rows"] < d["intact_token_rows"]
    text = str(rep)
    assert "uncond-only+low-rank" in text and "transformer loop" in text


def test_skip_is_explicit_and_reported(small):
    stagevar.accelerate(small, StageVARConfig(refine_start=None, skip=(-1,), name="t"))
    img = small.autoregressive_infer_cfg(**gen_kwargs(1))
    rep = stagevar.last_report(small)
    assert rep.skipping and rep.scales[-1].mode == "skip" and rep.scales[-1].rows == 0
    assert "scale skipping ON" in str(rep) and torch.isfinite(img).all()


def test_bf16_autocast_on_cpu(small):
    kw = gen_kwargs(2, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = small.autoregressive_infer_cfg(**kw)
        with stagevar.accelerated(small, "none"):
            same = small.autoregressive_infer_cfg(**kw)
        with stagevar.accelerated(small, StageVARConfig(refine_start=-2, rank_ratio=0.3, name="t")):
            fast = small.autoregressive_infer_cfg(**kw)
    assert torch.equal(same, want)
    assert fast.shape == want.shape and torch.isfinite(fast).all()


def test_report_requires_a_call(small):
    with pytest.raises(RuntimeError, match="not accelerated"):
        stagevar.last_report(small)
    stagevar.accelerate(small)
    with pytest.raises(RuntimeError, match="no accelerated generation"):
        stagevar.last_report(small)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.cuda
def test_cuda_none_bit_identical_and_preset_runs():
    var = reference_var("small", device=torch.device("cuda"))
    kw = gen_kwargs(2, seed=1)
    kw["label_B"] = kw["label_B"].cuda()
    want = var.autoregressive_infer_cfg(**kw)
    with stagevar.accelerated(var, "none"):
        assert torch.equal(var.autoregressive_infer_cfg(**kw), want)
    with stagevar.accelerated(var, "var-d16"):
        a = var.autoregressive_infer_cfg(**kw)
        b = var.autoregressive_infer_cfg(**kw)
        assert torch.equal(a, b) and a.device.type == "cuda"
        assert stagevar.last_report(var).device.startswith("cuda")


def test_deepcopy_of_an_accelerated_model_is_independent(small):
    import copy
    import inspect

    stagevar.accelerate(small, "var-d16")
    twin = copy.deepcopy(small)
    assert stagevar.current_config(twin).name == "var-d16"
    kw = gen_kwargs(1, seed=2)
    assert torch.equal(twin.autoregressive_infer_cfg(**kw), small.autoregressive_infer_cfg(**kw))
    stagevar.last_report(twin)
    stagevar.restore(twin)
    assert stagevar.is_accelerated(small) and not stagevar.is_accelerated(twin)
    assert list(inspect.signature(small.autoregressive_infer_cfg).parameters)[:2] == ["B", "label_B"]


def test_report_after_failure_and_scoped_override(small):
    stagevar.accelerate(small, "var-d16")
    small.autoregressive_infer_cfg(**gen_kwargs(1))
    first = stagevar.last_report(small)
    with stagevar.accelerated(small, "none"):
        pass
    assert stagevar.last_report(small) is first  # the outer config's engine and report are back
    with pytest.raises(ValueError):
        small.autoregressive_infer_cfg(B=2, label_B=torch.tensor([1]))
    with pytest.raises(RuntimeError, match="the last call raised"):
        stagevar.last_report(small)


def test_outputs_equal_needs_the_same_nesting_on_both_sides():
    from stagevar.engine import outputs_equal

    t = torch.arange(4)
    assert outputs_equal([t, (1, "x")], (t.clone(), [1, "x"]))   # lists and tuples alike
    assert not outputs_equal([t], t) and not outputs_equal(t, [t])
    assert not outputs_equal([1], 1) and not outputs_equal(1, (1,))
    assert not outputs_equal([t, 1], [t]) and not outputs_equal(t, t.float()) and not outputs_equal(t, t[:3])
