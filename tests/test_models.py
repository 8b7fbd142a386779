"""The reference VAR: KV-cached inference agrees with the teacher-forced masked forward."""
import torch

from stagevar.models import reference_var


def _cached_logits(var, label_B, x_BLCv):
    """Scale-by-scale inference with the KV cache on the given teacher inputs."""
    B = label_B.shape[0]
    cond_BD = var.class_emb(label_B)
    lvl_pos = var.lvl_embed(var.lvl_1L) + var.pos_1LC
    inputs = torch.cat((cond_BD.unsqueeze(1) + var.pos_start.expand(B, -1, -1), var.word_embed(x_BLCv)), dim=1) + lvl_pos
    out = []
    for b in var.blocks:
        b.attn.kv_caching(True)
    try:
        for bg, ed in var.begin_ends:
            x = inputs[:, bg:ed]
            for b in var.blocks:
                x = b(x=x, cond_BD=cond_BD, attn_bias=None)
            out.append(var.get_logits(x, cond_BD))
    finally:
        for b in var.blocks:
            b.attn.kv_caching(False)
    return torch.cat(out, dim=1)


def _teacher_inputs(var, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    quant = var.vae_quant_proxy[0]
    idx = [torch.randint(0, var.V, (B, pn * pn), generator=g) for pn in var.patch_nums]
    return idx, quant.idxBl_to_var_input(idx)


def test_cached_inference_matches_teacher_forced_forward():
    for layout in ("BHLc", "BLHc"):
        var = reference_var("small", kv_layout=layout)
        label_B = torch.tensor([3, 7])
        _, x_BLCv = _teacher_inputs(var, 2)
        with torch.no_grad():
            full = var(label_B, x_BLCv)
            cached = _cached_logits(var, label_B, x_BLCv)
        assert full.shape == (2, var.L, var.V)
        torch.testing.assert_close(cached, full, atol=2e-5, rtol=1e-4)


def test_teacher_inputs_match_autoregressive_inputs():
    var = reference_var("small")
    quant = var.vae_quant_proxy[0]
    idx, x_BLCv = _teacher_inputs(var, 2)
    f_hat = torch.zeros(2, var.Cvae, var.patch_nums[-1], var.patch_nums[-1])
    got = []
    with torch.no_grad():
        for si, pn in enumerate(var.patch_nums[:-1]):
            h = quant.embedding(idx[si]).transpose(1, 2).reshape(2, var.Cvae, pn, pn)
            f_hat, nxt = quant.get_next_autoregressive_input(si, len(var.patch_nums), f_hat, h)
            got.append(nxt.view(2, var.Cvae, -1).transpose(1, 2))
    torch.testing.assert_close(torch.cat(got, 1), x_BLCv, atol=1e-5, rtol=1e-5)


def test_generation_shapes_and_range():
    var = reference_var("tiny")
    img = var.autoregressive_infer_cfg(B=3, label_B=None, g_seed=1, cfg=2.0, top_k=5, top_p=0.9)
    side = var.patch_nums[-1] * var.vae_proxy[0].downsample
    assert img.shape == (3, 3, side, side)
    assert img.min() >= 0 and img.max() <= 1
    assert not any(b.attn.caching for b in var.blocks)


def test_vqvae_roundtrip_shapes():
    var = reference_var("tiny")
    vae = var.vae_proxy[0]
    img = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        idx = vae.img_to_idxBl(img)
        rec, vq_loss = vae(img)
    assert [t.shape for t in idx] == [(2, pn * pn) for pn in var.patch_nums]
    assert rec.shape == img.shape and vq_loss.ndim == 0


def test_gates_are_not_identity():
    """Random-weight blocks must change their input (upstream's 1e-5 gates would not)."""
    var = reference_var("tiny")
    x = torch.randn(2, 4, var.C)
    cond = var.class_emb(torch.tensor([0, 1]))
    with torch.no_grad():
        y = var.blocks[0](x=x, cond_BD=cond, attn_bias=None)
    assert (y - x).abs().mean() > 0.1 * x.abs().mean()
