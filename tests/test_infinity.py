"""The Infinity adapter on the reference Infinity: none bit-identical (fp32 and bf16 autocast), presets, RoPE of representatives, upstream's dtypes and layouts."""
import contextlib

import pytest
import torch
import torch.nn as nn

import stagevar
import stagevar.lowrank as engine_mod
import stagevar.models.infinity as ref_inf
from stagevar import StageVARConfig
from stagevar.models import reference_infinity

# ------------------------------------------------------------------------------------------
# accelerate() on the reference Infinity: text condition, RoPE, aspect ratios.
PROMPTS = ["a red cat sitting on a mat", "sky", "an old wooden boat drifting on a calm grey sea at dawn"]


@pytest.fixture
def bundle():
    return reference_infinity("tiny")


def call_kwargs(bundle, B, aspect="1:1", seed=0, cfg=3.0, negative=False, **extra):
    sched = bundle.schedule(aspect)
    K = len(sched)
    kw = dict(vae=bundle.vae, scale_schedule=sched, label_B_or_BLT=bundle.encode(PROMPTS[:B]), B=B, g_seed=seed,
              cfg_list=[cfg] * K, tau_list=[0.8] * K, top_k=0, top_p=0.0, ret_img=True)
    if negative:
        kw["negative_label_B_or_BLT"] = bundle.encode(["blurry ugly"] * B)
    kw.update(extra)
    return kw


def generate(model, kw):
    return model.autoregressive_infer_cfg(**kw)[2]


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("aspect", ["1:1", "16:9", "1:2"])
def test_none_preset_is_bit_identical(bundle, B, aspect):
    kw = call_kwargs(bundle, B, aspect, negative=(B == 3))
    want = generate(bundle.model, kw)
    with stagevar.accelerated(bundle.model, "none"):
        got = generate(bundle.model, kw)
    assert torch.equal(got, want)
    ret, idx, _ = bundle.model.autoregressive_infer_cfg(**kw)
    assert ret == [] and idx == []


def test_none_preset_bit_identical_with_hidden_state_cfg_and_trunk(bundle):
    kw = call_kwargs(bundle, 2, cfg_insertion_layer=[-1], trunk_scale=5)
    want = generate(bundle.model, kw)
    with stagevar.accelerated(bundle.model, "none"):
        got = generate(bundle.model, kw)
        assert len(stagevar.last_report(bundle.model).scales) == 5
    assert torch.equal(got, want)


def _record_block(model, j):
    calls = []
    blk = model.unregistered_blocks[j]
    h = blk.register_forward_hook(lambda m, a, k, out: calls.append((k["ca_kv"], out.detach().clone())), with_kwargs=True)
    return calls, h


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("branch", ["uncond", "cond"])
def test_one_branch_rows_and_text_kv_equal_the_2B_run(bundle, B, branch):
    m = bundle.model
    kw = call_kwargs(bundle, B, "16:9", negative=True)
    K = len(kw["scale_schedule"])
    last = len(m.unregistered_blocks) - 1
    base, h = _record_block(m, last)
    generate(m, kw)
    h.remove()
    stagevar.accelerate(m, StageVARConfig(refine_start=-2, branch=branch, name="t"))
    acc, h = _record_block(m, last)
    generate(m, kw)
    h.remove()
    t = K - 2
    for si in range(t):
        assert torch.equal(acc[si][1], base[si][1])
    rows = slice(0, B) if branch == "cond" else slice(B, 2 * B)
    torch.testing.assert_close(acc[t][1], base[t][1][rows], atol=1e-5, rtol=1e-5)
    # the text K/V the blocks saw: the kept rows' segments, offsets rebased, max length recomputed
    kv2, cu2, mx2 = base[t][0]
    kv1, cu1, mx1 = acc[t][0]
    lo, hi = (0, B) if branch == "cond" else (B, 2 * B)
    assert torch.equal(kv1, kv2[int(cu2[lo]):int(cu2[hi])])
    assert torch.equal(cu1, cu2[lo:hi + 1] - cu2[lo])
    assert mx1 == int((cu1[1:] - cu1[:-1]).max())
    assert cu1.shape[0] == B + 1
    for b in [acc[t][1], acc[t + 1][1]]:
        assert b.shape[0] == B


def test_lowrank_cache_lengths(bundle):
    m = bundle.model
    kw = call_kwargs(bundle, 2, "1:2")
    sched = kw["scale_schedule"]
    cfg = StageVARConfig(refine_start=-2, branch="uncond", rank_ratio=0.25, name="t")  # default unit: a chunk
    lengths = []
    hooks = [b.register_forward_hook(lambda mod, a, o: lengths.append((mod.sa.cached_k.shape[0], mod.sa.cached_k.shape[2])))
             for b in m.unregistered_blocks]
    stagevar.accelerate(m, cfg)
    generate(m, kw)
    for h in hooks:
        h.remove()
    nblk, K = len(m.unregistered_blocks), len(sched)
    total, expected = 0, []
    for si, (_, hh, ww) in enumerate(sched):
        M = hh * ww
        total += M if si < K - 2 else min(M, int(0.25 * M) + 1)
        expected += [(4 if si < K - 2 else 2, total)] * nblk
    assert lengths == expected


def test_rope_of_projected_tokens_is_that_of_representative_positions(bundle, monkeypatch):
    m = bundle.model
    kw = call_kwargs(bundle, 2, "16:9")
    sched = kw["scale_schedule"]
    K = len(sched)
    idx_seen, rope_seen = [], []
    real_idx, real_rope = engine_mod.representative_indices, ref_inf.apply_rotary_emb

    def spy_idx(x, r, gen):
        out = real_idx(x, r, gen)
        idx_seen.append(out.clone())
        return out

    def spy_rope(q, k, scale_schedule, grid, scale_ind):
        start = sum(h * w for _, h, w in scale_schedule[:scale_ind])
        table = grid[str(tuple(tuple(int(v) for v in s) for s in scale_schedule))]
        rope_seen.append((scale_ind, q.shape[2], table[..., start:start + q.shape[2], :].clone()))
        return real_rope(q, k, scale_schedule, grid, scale_ind)

    monkeypatch.setattr(engine_mod, "representative_indices", spy_idx)
    monkeypatch.setattr(ref_inf, "apply_rotary_emb", spy_rope)
    stagevar.accelerate(m, StageVARConfig(refine_start=-1, branch="uncond", rank_ratio=0.3, name="t"))
    generate(m, kw)
    full = m.rope2d_freqs_grid[str(tuple(sched))]
    start = sum(h * w for _, h, w in sched[:K - 1])
    per_chunk = len(m.block_chunks[0].module)
    low = [r for r in rope_seen if r[0] == K - 1]
    assert len(idx_seen) == len(m.block_chunks) and len(low) == len(m.unregistered_blocks)
    for j, (_, L, used) in enumerate(low):
        idx = idx_seen[j // per_chunk]  # (rows, r)
        assert L == idx.shape[1]
        want = full[..., start + idx, :]  # (2, 1, 1, 1, rows, r, F)
        assert used.shape[2] == idx.shape[0]  # per-row tables on the batch axis
        for row in range(idx.shape[0]):
            torch.testing.assert_close(used[:, 0, row, 0], want[:, 0, 0, 0, row])


@pytest.mark.parametrize("aspect", ["1:1", "2:1", "16:9", "9:16"])
def test_presets_run_at_any_aspect_ratio(bundle, aspect):
    m = bundle.model
    kw = call_kwargs(bundle, 2, aspect, negative=True)
    _, h, w = kw["scale_schedule"][-1]
    for name in ["infinity-2b", "infinity-2b-paper"]:
        with stagevar.accelerated(m, name):
            img = generate(m, kw)
            rep = stagevar.last_report(m)
        assert img.shape == (2, h * bundle.vae.upsample, w * bundle.vae.upsample, 3) and img.dtype == torch.uint8
        modes = [s.mode for s in rep.scales]
        assert modes[-3] == "uncond-only+low-rank"
        assert modes[-2:] == (["skip", "skip"] if name.endswith("paper") else ["uncond-only+low-rank"] * 2)
        assert rep.skipping == name.endswith("paper")


def test_default_preset_and_restore(bundle):
    m = bundle.model
    kw = call_kwargs(bundle, 2)
    want = generate(m, kw)
    stagevar.accelerate(m)
    assert stagevar.current_config(m).name == "infinity-2b"
    a = generate(m, kw)
    b = generate(m, kw)
    assert torch.equal(a, b) and not torch.equal(a, want)
    stagevar.restore(m)
    assert torch.equal(generate(m, kw), want)


def test_bad_input_names_what_to_change_and_leaves_model_usable(bundle):
    m = bundle.model
    kw = call_kwargs(bundle, 2)
    want = generate(m, kw)
    stagevar.accelerate(m, StageVARConfig(refine_start=-2, branch="both", rank_ratio=0.3, name="t"))
    with pytest.raises(ValueError, match="cfg_insertion_layer < 0 mixes"):
        generate(m, dict(kw, cfg_insertion_layer=[-1]))
    with pytest.raises(ValueError, match="needs vae="):
        generate(m, dict(kw, vae=None))
    with pytest.raises(ValueError, match="packs 2 prompts but B=3"):
        generate(m, dict(kw, B=3))
    with pytest.raises(ValueError, match="one entry per scale"):
        generate(m, dict(kw, cfg_list=[3.0]))
    with pytest.raises(NotImplementedError, match="gt_leak"):
        generate(m, dict(kw, gt_leak=2))
    with pytest.raises(NotImplementedError, match="bitwise .* head only; vae_type=0 is not supported"):
        generate(m, dict(kw, vae_type=0))
    stagevar.accelerate(m, StageVARConfig(refine_start=-2, branch="uncond", name="t"))
    with pytest.raises(ValueError, match="needs CFG"):
        generate(m, dict(kw, cfg_list=[1.0] * len(kw["scale_schedule"])))
    assert not any(b.sa.caching or b.sa.cached_k is not None for b in m.unregistered_blocks)
    stagevar.restore(m)
    assert torch.equal(generate(m, kw), want)


def test_per_chunk_level_embedding_needs_chunk_aligned_units():
    b = reference_infinity("tiny", add_lvl_embeding_only_first_block=0)
    kw = call_kwargs(b, 1)
    want = generate(b.model, kw)
    with stagevar.accelerated(b.model, "none"):
        assert torch.equal(generate(b.model, kw), want)
    with pytest.raises(stagevar.ConfigError, match="chunk boundaries"):
        stagevar.accelerate(b.model, StageVARConfig(rank_ratio=0.3, unit_blocks=3))


def test_deepcopy_of_accelerated_infinity(bundle):
    import copy

    m = bundle.model
    stagevar.accelerate(m, "infinity-2b")
    twin = copy.deepcopy(m)
    kw = call_kwargs(bundle, 2, cfg_insertion_layer=[-1])
    stagevar.accelerate(twin, StageVARConfig(refine_start=-2, branch="uncond", name="t"))
    stagevar.accelerate(m, StageVARConfig(refine_start=-2, branch="uncond", name="t"))
    assert torch.equal(generate(twin, kw), generate(m, kw))


def test_full_rank_units_reproduce_intact_with_per_chunk_level_embedding():
    """The level embedding is added in place before every chunk here; kept unit outputs must not
    pick it up, so full-rank 'sample' units reproduce the intact scales."""
    b = reference_infinity("tiny", add_lvl_embeding_only_first_block=0)
    kw = call_kwargs(b, 2, "16:9")
    want = generate(b.model, kw)
    cfg = StageVARConfig(refine_start=-3, branch="both", rank_ratio=1.0, reducer="sample", name="t")
    with pytest.warns(stagevar.NoAccelerationWarning):
        stagevar.accelerate(b.model, cfg)
    got = generate(b.model, kw)
    assert (got.int() - want.int()).abs().max() <= 1  # uint8 images; float reordering only


def test_hidden_state_cfg_skips_scales_with_cfg_one(bundle):
    sched = bundle.schedule("1:1")
    K = len(sched)
    kw = call_kwargs(bundle, 2, cfg_insertion_layer=[-1], cfg_list=[1.0, 3.0] * (K // 2) + [3.0] * (K % 2))
    want = generate(bundle.model, kw)
    with stagevar.accelerated(bundle.model, "none"):
        assert torch.equal(generate(bundle.model, kw), want)


def test_accelerate_checks_config_against_known_schedules(bundle):
    with pytest.raises(stagevar.ConfigError, match="outside this model's schedule of 7 scales"):
        stagevar.accelerate(bundle.model, StageVARConfig(refine_start=-20))
    assert not stagevar.is_accelerated(bundle.model)


@pytest.mark.parametrize("fused_norm", [True, False])
def test_full_rank_units_get_the_rope_each_block_path_reads(fused_norm):
    """Upstream's block without fused norms never passes scale_ind to self-attention (its RoPE rows
    start at 0 at every scale); the representatives' table must hold what either path reads, so
    full-rank 'sample' units reproduce the intact call -- on scales where the two regions of the
    table overlap (start < r) and where they do not."""
    b = reference_infinity("tiny", fused_norm=fused_norm)
    kw = call_kwargs(b, 2)
    want = generate(b.model, kw)
    cfg = StageVARConfig(refine_start=-3, branch="both", rank_ratio=1.0, reducer="sample", name="t")
    with pytest.warns(stagevar.NoAccelerationWarning), stagevar.accelerated(b.model, cfg):
        got = generate(b.model, kw)
    # float reordering may move a rare pixel by one level; the wrong RoPE rows moved 6-8% of them
    assert (got.int() - want.int()).abs().max() <= 1 and (got != want).float().mean() < 1e-3


def test_report_counts_rows_the_call_started_with(bundle):
    kw = call_kwargs(bundle, 2, cfg=1.0)  # no CFG: B rows throughout
    with stagevar.accelerated(bundle.model, "none"):
        generate(bundle.model, kw)
        rep = stagevar.last_report(bundle.model)
    assert rep.intact_rows == 2 and rep.token_rows == rep.intact_token_rows


def test_a_block_replaced_after_accelerate_is_run(bundle):
    """The adapter read its block list once, at accelerate time: a later replacement never ran."""
    import copy

    m = bundle.model
    kw = call_kwargs(bundle, 2, "1:1")
    stagevar.accelerate(m, "none")
    before = generate(m, kw)
    new = copy.deepcopy(m.block_chunks[0].module[0])
    with torch.no_grad():
        for p in new.parameters():
            p.mul_(1.7)
    m.block_chunks[0].module[0] = new
    m.unregistered_blocks[0] = new
    calls = []
    h = new.register_forward_hook(lambda *a: calls.append(1))
    got = generate(m, kw)
    h.remove()
    assert calls and not torch.equal(got, before)
    stagevar.restore(m)
    assert torch.equal(generate(m, kw), got)


def test_parameters_the_loop_does_not_implement_are_refused_by_name(bundle):
    m = bundle.model
    kw = call_kwargs(bundle, 1, "1:1")
    want = generate(m, kw)
    stagevar.accelerate(m, "none")
    assert torch.equal(generate(m, dict(kw, returns_vemb=1, inference_mode=True)), want)  # read or harmless
    for extra, name in [(dict(sampling_per_bits=2), "sampling_per_bits=2"), (dict(temperature=0.7), "temperature=0.7"),
                        (dict(gt_ls_Bl=[torch.zeros(1)]), "gt_ls_Bl=")]:
        with pytest.raises(TypeError, match=f"does not implement {name}"):
            generate(m, dict(kw, **extra))
    assert all(b.sa.cached_k is None for b in m.unregistered_blocks)


def test_trunk_scale_zero_under_none_returns_what_the_unpatched_call_returns(bundle):
    """A call that runs no scale: stagevar's loop used to fail planning it. (Upstream, whose code sum
    starts as the int 0, cannot decode it: compared here without the image.)"""
    m = bundle.model
    kw = call_kwargs(bundle, 2, "1:1", trunk_scale=0, ret_img=False)
    want = m.autoregressive_infer_cfg(**kw)
    with stagevar.accelerated(m, "none"):
        assert m.autoregressive_infer_cfg(**kw) == want == ([], [], [])
        assert stagevar.last_report(m).scales == []


# -- Infinity-8B's layout: apply_spatial_patchify=1 ---------------------------------------------------
def test_patchify_layout_tokens_are_2x2_patches_on_a_vae_grid_twice_as_large():
    b8 = reference_infinity("8b-tiny")
    m = b8.model
    assert m.apply_spatial_patchify == 1 and m.word_embed.in_features == 4 * b8.vae.codebook_dim
    assert m.V == 2 * m.word_embed.in_features
    kw = call_kwargs(b8, 2)
    img = generate(m, kw)
    side = kw["scale_schedule"][-1][1]
    assert img.shape == (2, 2 * side * b8.vae.upsample, 2 * side * b8.vae.upsample, 3)
    with stagevar.accelerated(m, "none"):
        assert torch.equal(generate(m, kw), img)
    for name in ("infinity-8b", "infinity-8b-paper"):
        with stagevar.accelerated(m, name):
            out = generate(m, kw)
        assert out.shape == img.shape and not torch.equal(out, img)


def test_patchify_predict_unshuffles_bits_onto_the_vae_grid(monkeypatch):
    """Token bits (4d) become a 2x2 patch of d-bit latents in upstream's order (pixel_shuffle: latent
    (i, j) channel c is token bit 4c + 2i + j), and the codes are summed on the VAE grid."""
    import sys

    from stagevar.adapters import adapter_for

    b8 = reference_infinity("8b-tiny")
    d = b8.vae.codebook_dim
    token_bits = torch.randint(0, 2, (4 * d,), generator=torch.Generator().manual_seed(3))
    module = sys.modules[type(b8.model).__module__]
    monkeypatch.setattr(module, "sample_with_top_k_top_p_also_inplace_modifying_logits_",
                        lambda logits, **kw: token_bits.reshape(1, 4 * d, 1))
    seen = []
    real = b8.vae.quantizer.lfq.indices_to_codes
    monkeypatch.setattr(b8.vae.quantizer.lfq, "indices_to_codes", lambda x, **kw: seen.append(x) or real(x, **kw))
    ad = adapter_for(b8.model)
    st = ad.begin((), call_kwargs(b8, 1, cfg=1.0))
    try:
        idx = ad.predict(st, 0, ad.scale_input(st, 0))  # scale 0: one token
        assert idx.shape == (1, 1, 4 * d) and torch.equal(idx.reshape(-1), token_bits)
        (latents,) = seen  # (1, 1, 2, 2, d)
        assert latents.shape == (1, 1, 2, 2, d)
        for i in range(2):
            for j in range(2):
                assert torch.equal(latents[0, 0, i, j], token_bits[torch.arange(d) * 4 + 2 * i + j])
        _, H, W = ad._vae_grid(st, -1)
        assert (H, W) == (2 * st.schedule[-1][1], 2 * st.schedule[-1][2])
        assert st.summed_codes.shape == (1, d, 1, H, W)
        assert st.next_x.shape == (1, st.schedule[1][1] * st.schedule[1][2], b8.model.C)  # back on the token grid
    finally:
        ad.end(st)


@pytest.mark.parametrize("shape,patchify,want", [("tiny", 0, "infinity-2b"), ("8b-tiny", 1, "infinity-8b")])
def test_default_preset_follows_patchify_and_width_not_depth(shape, patchify, want):
    from stagevar.adapters import adapter_for

    assert adapter_for(reference_infinity(shape).model).default_preset == want
    deep = reference_infinity("tiny", depth=40, num_block_chunks=8)  # Infinity-8B's depth, 2B's layout
    assert adapter_for(deep.model).default_preset == "infinity-2b"
    deep.model.C = 3584  # Infinity-8B's width (read from the attribute upstream sets; building one is slow)
    assert adapter_for(deep.model).default_preset == "infinity-8b"



# ------------------------------------------------------------------------------------------
# Infinity under bf16 autocast: the "none" preset reproduces the model's own call bit for bit,
PROMPTS = ["a red cat sitting on a mat", "sky", "an old wooden boat drifting on a calm grey sea at dawn"]


def biased(biased_bundle):
    """Non-zero biases: some CPU kernels add the bias in an order that depends on the input's memory
    layout, which the default zero biases hide."""
    biased_bundle.model.init_weights(gate=1.0, seed=1, bias_std=0.05)
    return biased_bundle


@pytest.fixture
def biased_bundle():
    return biased(reference_infinity("tiny"))


def autocast_kwargs(biased_bundle, B, aspect="1:1", insertion=(0,), cfg_list=None, seed=0):
    sched = biased_bundle.schedule(aspect)
    K = len(sched)
    return dict(vae=biased_bundle.vae, scale_schedule=sched, label_B_or_BLT=biased_bundle.encode(PROMPTS[:B]), B=B,
                negative_label_B_or_BLT=biased_bundle.encode(["blurry ugly"] * B) if B == 3 else None, g_seed=seed,
                cfg_list=cfg_list or [3.0] * K, tau_list=[1.0] * K, top_k=0, top_p=0.0,
                cfg_insertion_layer=list(insertion), ret_img=True)


def own_and_none(model, kw, autocast=True):
    """Images of the model's own call and of the "none" preset (under CPU bf16 autocast unless told not to)."""
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    with ctx():
        want = model.autoregressive_infer_cfg(**kw)[2]
    with ctx(), stagevar.accelerated(model, "none"):
        got = model.autoregressive_infer_cfg(**kw)[2]
    return got, want


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("insertion", [0, -1])
@pytest.mark.parametrize("aspect", ["1:1", "16:9"])
def test_none_preset_is_bit_identical_under_bf16_autocast(biased_bundle, B, insertion, aspect):
    got, want = own_and_none(biased_bundle.model, autocast_kwargs(biased_bundle, B, aspect, (insertion,)))
    assert torch.equal(got, want)


@pytest.mark.parametrize("insertion", [0, -1])
def test_none_preset_bit_identical_with_cfg_one_at_some_scales_and_per_chunk_level_embedding(insertion):
    b = biased(reference_infinity("tiny", add_lvl_embeding_only_first_block=0))
    K = len(b.schedule("1:2"))
    kw = autocast_kwargs(b, 3, "1:2", (insertion,), cfg_list=[1.0 if si % 2 else 3.0 for si in range(K)])
    got, want = own_and_none(b.model, kw)
    assert torch.equal(got, want)


@contextlib.contextmanager
def cuda_autocast_flag():
    """CUDA autocast's flag on (no GPU needed: CPU tensors ignore it), to see which code turns it off."""
    before = torch.is_autocast_enabled("cuda")
    torch.set_autocast_enabled("cuda", True)
    try:
        yield
    finally:
        torch.set_autocast_enabled("cuda", before)


@pytest.mark.parametrize("accelerated", [False, True])
def test_ada_condition_and_head_run_without_cuda_autocast_and_blocks_get_an_fp32_condition(biased_bundle, accelerated):
    """Upstream runs ``shared_ada_lin`` and ``get_logits`` with CUDA autocast off and hands the
    blocks ``shared_ada_lin(cond.float()).float()``; CPU autocast it leaves on."""
    m = biased_bundle.model
    seen = {"ada_lin": [], "head": [], "cond": []}
    hooks = [
        m.shared_ada_lin.register_forward_hook(
            lambda mod, a, out: seen["ada_lin"].append((torch.is_autocast_enabled("cuda"), out.dtype))),
        m.head.register_forward_hook(lambda mod, a, out: seen["head"].append(torch.is_autocast_enabled("cuda"))),
        m.unregistered_blocks[0].register_forward_pre_hook(
            lambda mod, a, k: seen["cond"].append(k["cond_BD"].dtype), with_kwargs=True),
    ]
    patch = stagevar.accelerated(m, "none") if accelerated else contextlib.nullcontext()
    try:
        with cuda_autocast_flag(), torch.autocast("cpu", dtype=torch.bfloat16), patch:
            m.autoregressive_infer_cfg(**autocast_kwargs(biased_bundle, 2))
    finally:
        for h in hooks:
            h.remove()
    assert seen["ada_lin"] == [(False, torch.bfloat16)]  # CPU autocast still on inside, as upstream
    assert seen["head"] and not any(seen["head"])
    assert seen["cond"] and set(seen["cond"]) == {torch.float32}


@pytest.mark.parametrize("accelerated", [False, True])
def test_guidance_rows_follow_upstream(biased_bundle, accelerated):
    """Logits of both halves only at scales whose cfg != 1; two halves whenever any cfg_list entry
    (even past the schedule) is not 1."""
    m = biased_bundle.model
    K = len(biased_bundle.schedule("1:1"))
    head_rows, block_rows = [], []
    hooks = [m.head_nm.register_forward_pre_hook(lambda mod, a: head_rows.append(a[0].shape[0])),
             m.unregistered_blocks[0].register_forward_pre_hook(lambda mod, a, k: block_rows.append(k["x"].shape[0]),
                                                                 with_kwargs=True)]
    patch = stagevar.accelerated(m, "none") if accelerated else contextlib.nullcontext()
    try:
        with patch:
            m.autoregressive_infer_cfg(**autocast_kwargs(biased_bundle, 2, cfg_list=[1.0 if si % 2 else 3.0 for si in range(K)]))
            assert head_rows == [2 if si % 2 else 4 for si in range(K)]
            head_rows.clear()
            block_rows.clear()
            m.autoregressive_infer_cfg(**autocast_kwargs(biased_bundle, 2, cfg_list=[1.0] * K + [3.0]))
            assert head_rows == [2] * K and block_rows == [4] * K
    finally:
        for h in hooks:
            h.remove()


def test_reference_keeps_upstream_dtypes_and_layouts_under_autocast(biased_bundle):
    m, vae = biased_bundle.model, biased_bundle.vae
    blk = m.unregistered_blocks[0]
    seen = {"ln_in": set(), "cached_k": set(), "cached_v": set(), "word_embed_in": [], "codes": [], "decode_in": []}
    decode, to_codes = vae.decode, vae.quantizer.lfq.indices_to_codes

    def spy_decode(z):
        seen["decode_in"].append(z)
        return decode(z)

    def spy_codes(idx, **kw):
        out = to_codes(idx, **kw)
        seen["codes"].append(out)
        return out

    def spy_cache(mod, args, out):
        seen["cached_k"].add(mod.cached_k.dtype)
        seen["cached_v"].add(mod.cached_v.dtype)

    hooks = [
        blk.ln_wo_grad.register_forward_pre_hook(lambda mod, a: seen["ln_in"].add(a[0].dtype)),
        blk.sa.register_forward_hook(spy_cache),
        m.word_embed.register_forward_pre_hook(lambda mod, a: seen["word_embed_in"].append(a[0])),
    ]
    vae.decode, vae.quantizer.lfq.indices_to_codes = spy_decode, spy_codes
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m.autoregressive_infer_cfg(**autocast_kwargs(biased_bundle, 2, "16:9"))
    finally:
        for h in hooks:
            h.remove()
        del vae.decode, vae.quantizer.lfq.indices_to_codes
    assert seen["ln_in"] == {torch.float32}                # ln_wo_grad(x.float())
    assert seen["cached_k"] == {torch.float32}            # RoPE in fp32, not cast back
    assert seen["cached_v"] == {torch.bfloat16}
    assert all(x.dtype == torch.float32 and x.is_contiguous() for x in seen["word_embed_in"])
    for c in seen["codes"][1:]:                           # upstream's quantizer: a channels-last view
        assert c.dtype == torch.float32 and not c.is_contiguous()
        assert c.is_contiguous(memory_format=torch.channels_last_3d)
    (z,) = seen["decode_in"]                              # the code sum keeps the codes' layout
    assert z.dtype == torch.float32 and z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous()


def test_reference_text_norm_and_text_attention_dtypes(biased_bundle):
    m = biased_bundle.model
    kv, lens, cu, mx = biased_bundle.encode(PROMPTS)
    x16 = kv.bfloat16()
    out = m.text_norm(x16)  # computed in fp32, returned in the input's dtype
    want = (x16.float() * torch.rsqrt(x16.float().pow(2).mean(-1, keepdim=True) + m.text_norm.eps)
            * m.text_norm.weight).bfloat16()
    assert out.dtype == torch.bfloat16 and torch.equal(out, want)
    # fp32 text attention runs as upstream's flash-attn call does: in bf16, the result cast to fp32
    sos = m.text_proj_for_sos((m.text_norm(kv), cu, mx))
    assert sos.dtype == torch.float32
    ca = m.text_proj_for_sos.ca
    seen = []
    h = ca.proj.register_forward_pre_hook(lambda mod, a: seen.append(a[0]))
    try:
        m.text_proj_for_sos((m.text_norm(kv), cu, mx))
    finally:
        h.remove()
    assert seen[0].dtype == torch.float32 and torch.equal(seen[0], seen[0].bfloat16().float())


def test_word_embed_input_goes_through_norm0_ve(biased_bundle):
    """Upstream applies ``norm0_ve`` (a LayerNorm when built with ``nm0=True``) before ``word_embed``."""
    m = biased_bundle.model
    m.norm0_ve = nn.LayerNorm(m.word_embed.in_features)
    with torch.no_grad():
        m.norm0_ve.weight.normal_(1.0, 0.5)
        m.norm0_ve.bias.normal_(0.0, 0.5)
    kw = autocast_kwargs(biased_bundle, 2)
    got, want = own_and_none(m, kw, autocast=False)
    assert torch.equal(got, want)
    m.norm0_ve = nn.Identity()
    assert not torch.equal(m.autoregressive_infer_cfg(**kw)[2], want)



# ------------------------------------------------------------------------------------------
# stagevar.adapters.infinity: behaviours the sampled mutation run (TESTING.md) found untested.
def _kw(bundle, **extra):
    sched = bundle.schedule("1:1")
    K = len(sched)
    kw = dict(vae=bundle.vae, scale_schedule=sched, label_B_or_BLT=bundle.encode(["a cat", "sky"]), B=2, g_seed=0,
              cfg_list=[3.0] * K, tau_list=[0.8] * K, top_k=0, top_p=0.0, ret_img=True)
    kw.update(extra)
    return kw


def test_the_calls_top_k_is_honoured():
    bundle = reference_infinity("tiny")
    m = bundle.model
    kw = _kw(bundle, top_k=1)            # greedy per bit
    want = m.autoregressive_infer_cfg(**kw)[2]
    with stagevar.accelerated(m, "none"):
        got = m.autoregressive_infer_cfg(**kw)[2]
    assert torch.equal(got, want)
    assert not torch.equal(want, m.autoregressive_infer_cfg(**_kw(bundle))[2])   # top_k=1 changes the sample


def test_cfg_insertion_layer_above_one_is_refused_with_the_rule():
    bundle = reference_infinity("tiny")
    with stagevar.accelerated(bundle.model, "none"):
        with pytest.raises(ValueError, match=r"^cfg_insertion_layer entries must be <= 1 \(0: logits, <0: hidden states\), got "):
            bundle.model.autoregressive_infer_cfg(**_kw(bundle, cfg_insertion_layer=[2]))


def test_skipping_a_middle_scale_feeds_the_next_scale_what_was_generated():
    """The input after a skipped scale is built from the codes generated so far (so it differs between seeds), not zeros."""
    from conftest import ScaleInputs

    from stagevar.api import _ATTR

    bundle = reference_infinity("tiny")
    K = len(bundle.schedule("1:1"))
    stagevar.accelerate(bundle.model, stagevar.StageVARConfig(refine_start=None, skip=(K - 3,), name="t"))
    engine = getattr(bundle.model, _ATTR).engine
    seen = []
    for seed in (0, 1):
        obs = ScaleInputs()
        engine.observe(obs, **_kw(bundle, g_seed=seed))
        assert K - 3 not in obs.x
        seen.append(obs.x[K - 2])
    assert (seen[0] - seen[1]).abs().amax() > 1e-4


# ------------------------------------------------------------------------------------------
# trunk_scale runs the prefix of the full call's plan; negative prompts are counted.
def test_a_truncated_call_runs_the_prefix_of_the_full_plan(bundle):
    """The plan was resolved on the shortened schedule: structure scales got cut, a short trunk raised."""
    K = len(bundle.schedule("1:1"))
    stagevar.accelerate(bundle.model, "infinity-2b")  # the last three scales accelerated
    with pytest.warns(stagevar.NoAccelerationWarning) as rec:
        assert bundle.model.autoregressive_infer_cfg(**call_kwargs(bundle, 2, trunk_scale=0, ret_img=False)) == ([], [], [])
    assert [str(w.message) for w in rec] == ["config 'infinity-2b': this call runs no scale at all; nothing is accelerated"]
    for trunk in (1, K - 3, K - 1):
        kw = call_kwargs(bundle, 2, trunk_scale=trunk)
        if trunk <= K - 3:
            with pytest.warns(stagevar.NoAccelerationWarning, match=f"stops after scale {trunk - 1}, before any"):
                got = bundle.model.autoregressive_infer_cfg(**kw)
        else:
            got = bundle.model.autoregressive_infer_cfg(**kw)
        modes = [s.mode for s in stagevar.last_report(bundle.model).scales]
        assert len(modes) == trunk
        assert modes == (["intact"] * (K - 3) + ["uncond-only+low-rank"] * 3)[:trunk]
        if trunk <= K - 3:  # nothing accelerated: the model's own call, bit for bit
            stagevar.restore(bundle.model)
            assert torch.equal(got[2], bundle.model.autoregressive_infer_cfg(**kw)[2])
            stagevar.accelerate(bundle.model, "infinity-2b")


def test_a_wrong_number_of_negative_prompts_is_named(bundle):
    stagevar.accelerate(bundle.model, "none")
    kw = call_kwargs(bundle, 3)
    kw["negative_label_B_or_BLT"] = bundle.encode(["blurry"] * 2)
    with pytest.raises(ValueError, match=r"negative_label_B_or_BLT packs 2 negative prompts but label_B_or_BLT packs "
                                         r"3 prompts: give one negative prompt per prompt"):
        bundle.model.autoregressive_infer_cfg(**kw)
