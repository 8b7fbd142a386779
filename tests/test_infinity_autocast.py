"""Infinity under bf16 autocast: the "none" preset reproduces the model's own call bit for bit,
and the reference model keeps upstream's dtypes and memory layouts (what makes that a real check)."""
import contextlib

import pytest
import torch
import torch.nn as nn

import stagevar
from stagevar.models import reference_infinity

PROMPTS = ["a red cat sitting on a mat", "sky", "an old wooden boat drifting on a calm grey sea at dawn"]


def biased(bundle):
    """Non-zero biases: some CPU kernels add the bias in an order that depends on the input's memory
    layout, which the default zero biases hide."""
    bundle.model.init_weights(gate=1.0, seed=1, bias_std=0.05)
    return bundle


@pytest.fixture
def bundle():
    return biased(reference_infinity("tiny"))


def call_kwargs(bundle, B, aspect="1:1", insertion=(0,), cfg_list=None, seed=0):
    sched = bundle.schedule(aspect)
    K = len(sched)
    return dict(vae=bundle.vae, scale_schedule=sched, label_B_or_BLT=bundle.encode(PROMPTS[:B]), B=B,
                negative_label_B_or_BLT=bundle.encode(["blurry ugly"] * B) if B == 3 else None, g_seed=seed,
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
def test_none_preset_is_bit_identical_under_bf16_autocast(bundle, B, insertion, aspect):
    got, want = own_and_none(bundle.model, call_kwargs(bundle, B, aspect, (insertion,)))
    assert torch.equal(got, want)


@pytest.mark.parametrize("insertion", [0, -1])
def test_none_preset_bit_identical_with_cfg_one_at_some_scales_and_per_chunk_level_embedding(insertion):
    b = biased(reference_infinity("tiny", add_lvl_embeding_only_first_block=0))
    K = len(b.schedule("1:2"))
    kw = call_kwargs(b, 3, "1:2", (insertion,), cfg_list=[1.0 if si % 2 else 3.0 for si in range(K)])
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
def test_ada_condition_and_head_run_without_cuda_autocast_and_blocks_get_an_fp32_condition(bundle, accelerated):
    """Upstream runs ``shared_ada_lin`` and ``get_logits`` with CUDA autocast off and hands the
    blocks ``shared_ada_lin(cond.float()).float()``; CPU autocast it leaves on."""
    m = bundle.model
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
            m.autoregressive_infer_cfg(**call_kwargs(bundle, 2))
    finally:
        for h in hooks:
            h.remove()
    assert seen["ada_lin"] == [(False, torch.bfloat16)]  # CPU autocast still on inside, as upstream
    assert seen["head"] and not any(seen["head"])
    assert seen["cond"] and set(seen["cond"]) == {torch.float32}


@pytest.mark.parametrize("accelerated", [False, True])
def test_guidance_rows_follow_upstream(bundle, accelerated):
    """Logits of both halves only at scales whose cfg != 1; two halves whenever any cfg_list entry
    (even past the schedule) is not 1."""
    m = bundle.model
    K = len(bundle.schedule("1:1"))
    head_rows, block_rows = [], []
    hooks = [m.head_nm.register_forward_pre_hook(lambda mod, a: head_rows.append(a[0].shape[0])),
             m.unregistered_blocks[0].register_forward_pre_hook(lambda mod, a, k: block_rows.append(k["x"].shape[0]),
                                                                 with_kwargs=True)]
    patch = stagevar.accelerated(m, "none") if accelerated else contextlib.nullcontext()
    try:
        with patch:
            m.autoregressive_infer_cfg(**call_kwargs(bundle, 2, cfg_list=[1.0 if si % 2 else 3.0 for si in range(K)]))
            assert head_rows == [2 if si % 2 else 4 for si in range(K)]
            head_rows.clear()
            block_rows.clear()
            m.autoregressive_infer_cfg(**call_kwargs(bundle, 2, cfg_list=[1.0] * K + [3.0]))
            assert head_rows == [2] * K and block_rows == [4] * K
    finally:
        for h in hooks:
            h.remove()


def test_reference_keeps_upstream_dtypes_and_layouts_under_autocast(bundle):
    m, vae = bundle.model, bundle.vae
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
            m.autoregressive_infer_cfg(**call_kwargs(bundle, 2, "16:9"))
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


def test_reference_text_norm_and_text_attention_dtypes(bundle):
    m = bundle.model
    kv, lens, cu, mx = bundle.encode(PROMPTS)
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


def test_word_embed_input_goes_through_norm0_ve(bundle):
    """Upstream applies ``norm0_ve`` (a LayerNorm when built with ``nm0=True``) before ``word_embed``."""
    m = bundle.model
    m.norm0_ve = nn.LayerNorm(m.word_embed.in_features)
    with torch.no_grad():
        m.norm0_ve.weight.normal_(1.0, 0.5)
        m.norm0_ve.bias.normal_(0.0, 0.5)
    kw = call_kwargs(bundle, 2)
    got, want = own_and_none(m, kw, autocast=False)
    assert torch.equal(got, want)
    m.norm0_ve = nn.Identity()
    assert not torch.equal(m.autoregressive_infer_cfg(**kw)[2], want)
