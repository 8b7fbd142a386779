"""accelerate() on the reference STAR: text by cross-attention, its `[0]` quirk, RoPE, refusals.

STAR's schedule is square by construction (``patch_nums``, one RoPE table per square scale), so
there is no non-square call to test.
"""
import inspect
import math

import pytest
import torch

import stagevar
import stagevar.lowrank as engine_mod
from conftest import edited_copy
import stagevar.models.star as ref_star
from stagevar import StageVARConfig
from stagevar.adapters import STARAdapter, UnsupportedModelError, adapter_for
from stagevar.plan import rank_from_ratio, ratios_for_units
from stagevar.models.star import PATCH_NUMS_1024, STAR, reference_star
from stagevar.presets import _STAR_D30_096_OF_MIN_MC


PROMPTS = ["a red cat sitting on a mat", "sky", "an old wooden boat drifting on a calm grey sea at dawn"]
UNCOND_LAST_2 = StageVARConfig(refine_start=-2, branch="uncond", name="uncond-last-2")


@pytest.fixture
def bundle():
    return reference_star("small")


def call_kwargs(bundle, B, seed=0, cfg=4.0, prompts=PROMPTS, **extra):
    kw = dict(B=B, label_B=None, **bundle.encode(list(prompts[:B])), g_seed=seed, cfg=cfg, top_k=0, top_p=0.0)
    kw.update(extra)
    return kw


def generate(model, kw):
    return model.autoregressive_infer_cfg(**kw)


# -- exactness, reproducibility, restore, interruption -------------------------------------------------
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("variant", ["default", "smooth", "old-sampler", "no-rope", "BLHc"])
def test_none_is_bit_identical_to_the_unpatched_call(B, variant):
    overrides = {"no-rope": dict(rotary_pos_emb=False), "BLHc": dict(kv_layout="BLHc")}.get(variant, {})
    bundle = reference_star("small", **overrides)
    extra = {"smooth": dict(more_smooth=True), "old-sampler": dict(sample_version="old", top_k=50)}.get(variant, {})
    kw = call_kwargs(bundle, B, top_p=0.9, **{"top_k": 20, **extra})
    want = generate(bundle.model, kw)
    with stagevar.accelerated(bundle.model, "none"):
        got = generate(bundle.model, kw)
    assert torch.equal(got, want)


def test_the_adapter_is_stars_and_the_default_preset_goes_by_depth(bundle):
    assert isinstance(adapter_for(bundle.model), STARAdapter)
    assert adapter_for(bundle.model).default_preset == "star-d30"
    assert adapter_for(reference_star("tiny", depth=16).model).default_preset == "star-d16"
    stagevar.accelerate(bundle.model)
    generate(bundle.model, call_kwargs(bundle, 1))
    rep = stagevar.last_report(bundle.model)
    assert rep.config_name == "star-d30"
    assert [s.mode for s in rep.scales[-2:]] == ["uncond-only", "uncond-only+low-rank"]
    assert all(s.mode == "intact" for s in rep.scales[:-2])


@pytest.mark.parametrize("name", ["star-d30", "star-d16"])
def test_presets_are_reproducible_from_the_seed(bundle, name):
    m = bundle.model
    with stagevar.accelerated(m, name):
        a = generate(m, call_kwargs(bundle, 2, seed=5))
        b = generate(m, call_kwargs(bundle, 2, seed=5))
        c = generate(m, call_kwargs(bundle, 2, seed=6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_restore_is_exact(bundle):
    m = bundle.model
    kw = call_kwargs(bundle, 2, seed=1)
    want = generate(m, kw)
    stagevar.accelerate(m, "star-d30")
    assert not torch.equal(generate(m, kw), want)
    stagevar.restore(m)
    assert not stagevar.is_accelerated(m)
    assert torch.equal(generate(m, kw), want)


def test_an_exception_mid_call_leaves_the_model_usable(bundle):
    m = bundle.model
    kw = call_kwargs(bundle, 2, seed=2)
    want = generate(m, kw)
    stagevar.accelerate(m, "star-d30")
    adapter = getattr(m, stagevar.api._ATTR).engine.adapter
    seen = {"n": 0}

    def boom(*_):
        seen["n"] += 1
        if seen["n"] == 3:
            raise KeyboardInterrupt("stop")

    handle = m.blocks[-1].register_forward_pre_hook(boom)
    with pytest.raises(KeyboardInterrupt):
        generate(m, kw)
    handle.remove()
    assert all(length is None for length in adapter.cache_lengths()), "KV caches left on"
    with stagevar.accelerated(m, "none"):
        assert torch.equal(generate(m, kw), want)


# -- upstream's `[0]`: every row gets one row's cross-attention --------------------------------------
def _with_text_row(kw, row, source_row):
    """``kw`` with text row ``row`` (hidden states and mask, not the pooled feature) replaced by ``source_row``'s."""
    kw = dict(kw)
    for name in ("encoder_hidden_states", "encoder_attention_mask"):
        t = kw[name].clone()
        t[row] = kw[name][source_row]
        kw[name] = t
    return kw


def test_under_cfg_every_row_gets_prompt_0s_cross_attention(bundle):
    """Upstream's quirk, kept: only text row 0 (the first prompt) reaches any row through cross-attention."""
    m, B = bundle.model, 3
    kw = call_kwargs(bundle, B)
    want = generate(m, kw)
    for row in range(1, 2 * B):  # any other row's text: no effect at all
        assert torch.equal(generate(m, _with_text_row(kw, row, 0 if row != 1 else 2)), want), row
    assert not torch.equal(generate(m, _with_text_row(kw, 0, 1)), want)
    with stagevar.accelerated(m, "none"):
        assert torch.equal(generate(m, _with_text_row(kw, B + 1, 0)), want)


def test_after_the_cut_every_kept_row_gets_the_empty_prompts_cross_attention(bundle):
    """One branch kept (uncond): the text seen from the cut on is the empty prompts' rows, and through
    the `[0]`, the first empty prompt's cross-attention reaches every row; the prompts' text is gone."""
    m, B = bundle.model, 2
    kw = call_kwargs(bundle, B)
    K = len(m.patch_nums)
    texts = []

    def record(mod, args, kwargs):
        texts.append((kwargs["encoder_hidden_states"], kwargs["attn_bias"]))

    hook = m.blocks[0].cross_attn.register_forward_pre_hook(record, with_kwargs=True)
    with stagevar.accelerated(m, UNCOND_LAST_2):
        base = generate(m, kw)
        assert len(texts) == K
        bias = ref_star.prepare_attn_mask(kw["encoder_attention_mask"])
        for si, (text, mask) in enumerate(texts):
            rows = slice(0, 2 * B) if si < K - 2 else slice(B, 2 * B)
            assert torch.equal(text, kw["encoder_hidden_states"][rows]) and torch.equal(mask, bias[rows]), si
        # the first empty prompt's text reaches the image; the prompt rows' text after the cut does not
        assert not torch.equal(generate(m, _with_text_row(kw, B, 0)), base)
        assert torch.equal(generate(m, _with_text_row(kw, B + 1, 0)), base)
    hook.remove()
    # unpatched, the first empty prompt's text has no effect (only row 0's is ever used)
    want = generate(m, kw)
    assert torch.equal(generate(m, _with_text_row(kw, B, 0)), want)


def _record_blocks(model):
    """Per block call: (block index, input x, text, text bias, KV cache before the call, output)."""
    calls = []

    def pre(mod, args, kwargs):
        k = mod.attn.cached_k
        calls.append([mod.block_idx, kwargs["x"].clone(), kwargs["encoder_hidden_states"],
                      kwargs["encoder_attention_mask"], None if k is None else k.clone()])

    def post(mod, args, kwargs, out):
        calls[-1].append(out.clone())

    handles = [h for b in model.blocks for h in (b.register_forward_pre_hook(pre, with_kwargs=True),
                                                  b.register_forward_hook(post, with_kwargs=True))]
    return calls, lambda: [h.remove() for h in handles]


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("branch", ["uncond", "cond"])
def test_one_branch_rows_and_text_equal_the_2B_run(bundle, B, branch):
    m = bundle.model
    kw = call_kwargs(bundle, B)
    K, depth = len(m.patch_nums), len(m.blocks)
    base, remove = _record_blocks(m)
    generate(m, kw)
    remove()
    acc, remove = _record_blocks(m)
    with stagevar.accelerated(m, StageVARConfig(refine_start=-2, branch=branch, name="t")):
        generate(m, kw)
    remove()
    assert len(acc) == len(base) == K * depth
    t = K - 2
    for (j, x1, *_, o1), (_, x2, *_, o2) in zip(acc[:t * depth], base[:t * depth]):
        assert torch.equal(x1, x2) and torch.equal(o1, o2)
    rows = slice(0, B) if branch == "cond" else slice(B, 2 * B)
    for si in (t, t + 1):
        for j in range(depth):
            _, x1, text1, mask1, k1, o1 = acc[si * depth + j]
            _, x2, text2, mask2, k2, o2 = base[si * depth + j]
            assert x1.shape[0] == B and o1.shape[0] == B
            assert torch.equal(text1, text2[rows]) and torch.equal(mask1, mask2[rows])
            if si == t:  # the kept rows' history, cut once; block 0 sees the kept rows' input
                assert torch.equal(k1, k2[rows])
                if j == 0:
                    assert torch.equal(x1, x2[rows])
                if branch == "cond":  # row 0 is still prompt 0: the same computation on fewer rows
                    torch.testing.assert_close(o1, o2[rows], atol=1e-5, rtol=1e-5)
                else:  # the 2B run gave these rows prompt 0's cross-attention; here the empty prompt's
                    assert not torch.allclose(o1, o2[rows], atol=1e-4)


# -- low rank ------------------------------------------------------------------------------------------
def test_projected_tokens_get_the_rope_of_their_representative_positions(bundle, monkeypatch):
    m = bundle.model
    K = len(m.patch_nums)
    idx_seen, freqs_seen = [], []
    real_idx, real_rope = engine_mod.representative_indices, ref_star.apply_rotary_emb

    def spy_idx(x, r, gen):
        out = real_idx(x, r, gen)
        idx_seen.append(out.clone())
        return out

    def spy_rope(q, k, freqs_cis):
        freqs_seen.append((q.shape, freqs_cis.clone()))
        return real_rope(q, k, freqs_cis)

    monkeypatch.setattr(engine_mod, "representative_indices", spy_idx)
    monkeypatch.setattr(ref_star, "apply_rotary_emb", spy_rope)
    with stagevar.accelerated(m, StageVARConfig(refine_start=-1, branch="uncond", rank_ratio=0.3, name="t")):
        generate(m, call_kwargs(bundle, 2))
    depth = len(m.blocks)
    assert len(idx_seen) == depth and len(freqs_seen) == K * depth
    start = sum(pn * pn for pn in m.patch_nums[:-1])
    for j, (q_shape, used) in enumerate(freqs_seen[-depth:]):
        idx = idx_seen[j]  # (rows, r): one unit per block
        assert q_shape[0] == idx.shape[0] == 2 and q_shape[2] == idx.shape[1] < m.patch_nums[-1] ** 2
        assert torch.equal(used, m.freqs_cis[start + idx])  # (rows, r, head_dim / 2)
    for si, (q_shape, used) in enumerate(freqs_seen[:-depth:depth]):  # intact scales: the scale's own rows
        lo = sum(pn * pn for pn in m.patch_nums[:si])
        assert torch.equal(used, m.freqs_cis[lo:lo + m.patch_nums[si] ** 2])


@pytest.mark.parametrize("layout", ["BHLc", "BLHc"])
def test_lowrank_cache_lengths(layout):
    bundle = reference_star("small", kv_layout=layout)
    m = bundle.model
    lengths = []
    hooks = [b.register_forward_hook(lambda mod, a, o: lengths.append(
        (mod.attn.cached_k.shape[0], mod.attn.cached_k.shape[1 if layout == "BLHc" else 2]))) for b in m.blocks]
    with stagevar.accelerated(m, StageVARConfig(refine_start=-2, branch="uncond", rank_ratio=0.25, name="t")):
        generate(m, call_kwargs(bundle, 2))
    for h in hooks:
        h.remove()
    K, total, expected = len(m.patch_nums), 0, []
    for si, pn in enumerate(m.patch_nums):
        M = pn * pn
        total += M if si < K - 2 else min(M, int(0.25 * M) + 1)
        expected += [(4 if si < K - 2 else 2, total)] * len(m.blocks)
    assert lengths == expected


def test_star_d30_ranks_are_the_authors_at_1024():
    """The preset's ratios of M give, block by block, the ranks of the authors' int(q * min(M, C)) + 1
    at 1024^2 (M = 4096 on the last scale, C = 1920)."""
    from stagevar.plan import resolve_plan

    sched = [(pn, pn) for pn in PATCH_NUMS_1024]
    plans = resolve_plan(stagevar.preset("star-d30"), sched, units=30)
    assert [p.mode for p in plans[-2:]] == ["uncond-only", "uncond-only+low-rank"]
    assert all(p.mode == "intact" for p in plans[:-2])
    M, C = 64 * 64, 1920
    assert list(plans[-1].ranks) == [int(q * min(M, C)) + 1 for q in _STAR_D30_096_OF_MIN_MC]
    # star-d16: the same table over 16 blocks, as ratios of M (at 256^2, min(M, C) = M)
    d16 = resolve_plan(stagevar.preset("star-d16"), [(pn, pn) for pn in ref_star.PATCH_NUMS_256], units=16)
    want = [rank_from_ratio(q, 256) for q in ratios_for_units(_STAR_D30_096_OF_MIN_MC, 16, "t", resample=True)]
    assert list(d16[-1].ranks) == want and d16[-2].mode == "uncond-only"


# -- refusals ------------------------------------------------------------------------------------------
def test_the_masked_sampler_is_refused(bundle):
    m = bundle.model
    m.enable_adaptive_norm, m.from_idx = True, 3  # as upstream builds star-1024-sampler (from_idx=9 there)
    kw = call_kwargs(bundle, 1)
    stagevar.accelerate(m, "star-d30")
    generate(m, kw)  # without w_mask the masked sampler never runs: accepted
    with pytest.raises(ValueError, match="masked sampler.*w_mask=False"):
        generate(m, dict(kw, w_mask=True))
    m.from_idx = math.inf  # w_mask on a model without the sampler: no effect upstream, accepted
    generate(m, dict(kw, w_mask=True))


@pytest.mark.parametrize("attr, value, match", [("noise_sampling", True, "global RNG"),
                                                ("shared_aln", True, "shared_aln"),
                                                ("absolute_lvl_emb", False, "level embedding")])
def test_unsupported_models_are_refused_and_left_alone(bundle, attr, value, match):
    m = bundle.model
    setattr(m, attr, value)
    with pytest.raises(UnsupportedModelError, match=match):
        stagevar.accelerate(m, "star-d30")
    assert not stagevar.is_accelerated(m)


def test_calls_the_loop_cannot_serve_are_refused(bundle):
    m = bundle.model
    stagevar.accelerate(m, "star-d30")
    kw = call_kwargs(bundle, 2)
    with pytest.raises(ValueError, match="2B text rows"):
        generate(m, dict(kw, B=3))
    with pytest.raises(ValueError, match="encoder_pool_feat"):
        generate(m, dict(kw, encoder_pool_feat=None))
    with pytest.raises(TypeError, match="one number"):
        generate(m, dict(kw, cfg=[4.0] * len(m.patch_nums)))


def test_a_forks_extra_argument_is_refused_by_name():
    """The StageVAR authors' fork adds `alpha=` (their rank table's key): a non-default value is named,
    not silently ignored."""

    upstream = vars(STAR)["autoregressive_infer_cfg"]

    def fork_call(self, B, label_B=None, encoder_hidden_states=None, encoder_attention_mask=None,
                  encoder_pool_feat=None, g_seed=None, cfg=1.5, top_k=0, top_p=0.0,
                  more_smooth=False, w_mask=False, sample_version="new", alpha=None):
        return upstream(self, B, label_B, encoder_hidden_states, encoder_attention_mask, encoder_pool_feat, g_seed, cfg,
                        top_k, top_p, more_smooth, w_mask, sample_version)

    Fork = edited_copy(STAR, "Fork", autoregressive_infer_cfg=fork_call)  # the fork edits the class itself

    bundle = reference_star("tiny")
    m = bundle.model
    m.__class__ = Fork
    assert "alpha" in inspect.signature(Fork.autoregressive_infer_cfg).parameters
    kw = call_kwargs(bundle, 1)
    stagevar.accelerate(m, "star-d30")
    generate(m, kw)
    with pytest.raises(TypeError, match="alpha='0.96'"):
        generate(m, dict(kw, alpha="0.96"))


# -- no host traffic inside a scale ----------------------------------------------------------------------
_SYNC_CONFIGS = ["none", "star-d30", "star-d16",
                 StageVARConfig(refine_start=-2, branch="cond", rank_ratio=0.3, reducer="sample", name="cond-sample"),
                 StageVARConfig(refine_start=-2, branch="both", rank_ratio=0.4, reducer="fastvar", name="fastvar-like"),
                 StageVARConfig(refine_start=-3, branch="uncond", rank_ratio=0.2, skip=(-1,), name="skip-last")]


@pytest.mark.parametrize("config", _SYNC_CONFIGS, ids=str)
def test_star_scales_are_sync_free(watched, config):
    bundle = reference_star("small")
    stagevar.accelerate(bundle.model, config)
    bundle.model.autoregressive_infer_cfg(**call_kwargs(bundle, 2, top_k=5, top_p=0.9, sample_version="old"))
    bundle.model.autoregressive_infer_cfg(**call_kwargs(bundle, 1, seed=1, more_smooth=True))
    assert watched == []
