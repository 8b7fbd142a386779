"""stagevar's STAR adapter against upstream STAR's own call, on a CPU.

Not part of CI (it needs a checkout of Davinci-XLab/STAR-T2I, and is not named ``test_*``)::

    git clone https://github.com/Davinci-XLab/STAR-T2I /tmp/star_up
    python benchmarks/upstream/star_suite.py --upstream /tmp/star_up

It builds a small upstream ``VAR`` (``models/var_drop.py``, the published inference settings:
cross-attention to text, 2-D RoPE normalised to 64, level embedding, logit norm, l2-normed
attention) and upstream's ``VQVAE``, with random weights, and for each case compares
``stagevar.accelerate(model, "none")`` with the unpatched ``autoregressive_infer_cfg`` by
``torch.equal`` on the images. Then it runs the STAR presets and one-branch / low-rank configs
through upstream's blocks (the per-row RoPE tables of representative tokens go through upstream's
``apply_rotary_emb``), checking every KV-cache length after every scale and that each is
reproducible from ``g_seed``; and it checks the refusal of the masked sampler on a model built
with ``enable_adaptive_norm=True``. One PASS/FAIL/SKIP line per case; exit status 1 on any FAIL.

Cases: fp32 and CPU bf16 autocast; B = 1 and B = 3 (prompts of different lengths); the
published sampler (top-k 600, top-p 0.8), ``more_smooth``, ``sample_version="old"``; SDPA
self-attention (``flash_if_available=False``, as upstream's scripts build it) and the flash-attn
path (BLHc KV caches, taken only for non-fp32 tensors, so under bf16).

What is stood in for, and why:
- ``flash_attn``: no CPU build. Upstream imports it inside ``try`` and runs without it; the
  stand-in ``flash_attn_func`` (PyTorch SDPA, refusing fp32 like the real kernel) exists only to
  exercise the flash layout. Nothing else of flash-attn is provided, so the fused ops stay off.
- ``timm``, only if it is not installed: ``models/embed_rope.py`` imports a few names at module
  level and uses none of them on this path.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import types
import warnings

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..")))  # this checkout's stagevar

import stagevar  # noqa: E402
from stagevar.api import _ATTR  # noqa: E402
from stagevar import StageVARConfig  # noqa: E402
from stagevar import engine as _engine  # noqa: E402

_engine.DEBUG_CHECKS = True  # every block's KV-cache length checked after every scale


# -- stand-ins ------------------------------------------------------------------------------------
def _flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **unused):
    """``(B, L, H, c)`` -> ``(B, L, H, c)`` (contiguous, as the real kernel returns)."""
    for t in (q, k, v):
        if t.dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError(f"flash-attn stand-in: FlashAttention only supports fp16 and bf16, got {t.dtype}")
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale,
                                         is_causal=causal)
    return out.transpose(1, 2).contiguous()


def _install_stand_ins() -> None:
    flash = types.ModuleType("flash_attn")
    flash.flash_attn_func = _flash_attn_func
    sys.modules.setdefault("flash_attn", flash)
    try:
        import timm  # noqa: F401
    except ImportError:
        class _Unused:
            def __init__(self, *a, **k):
                raise RuntimeError("timm stand-in: not used on STAR's inference path")

        names = {"timm.models.vision_transformer": dict(Mlp=_Unused, PatchEmbed=_Unused, _cfg=lambda *a, **k: {}),
                 "timm.models.layers": dict(DropPath=_Unused, to_2tuple=lambda x: (x, x), trunc_normal_=lambda *a, **k: None),
                 "timm.models.registry": dict(register_model=lambda f: f)}
        for mod in ("timm", "timm.models"):
            sys.modules[mod] = types.ModuleType(mod)
        for mod, attrs in names.items():
            m = types.ModuleType(mod)
            for k, v in attrs.items():
                setattr(m, k, v)
            sys.modules[mod] = m


# -- the upstream model ------------------------------------------------------------------------------
PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8)
C_TEXT, T_TEXT = 32, 12


def build(flash: bool, adaptive_norm: bool = False, depth: int = 3, seed: int = 0):
    from models.var_drop import VAR
    from models.vqvae import VQVAE

    with contextlib.redirect_stdout(io.StringIO()), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = VQVAE(vocab_size=4096, z_channels=8, ch=32, test_mode=True, share_quant_resi=4, v_patch_nums=PATCH_NUMS)
        var = VAR(vae_local=vae, depth=depth, embed_dim=128, num_heads=4, drop_path_rate=0.0, attn_l2_norm=True,
                  enable_cross=True, in_dim_cross=C_TEXT, patch_nums=PATCH_NUMS, flash_if_available=flash,
                  fused_if_available=False, rotary_pos_emb=True, absolute_lvl_emb=True, rope_theta=10000, rope_norm=64.0,
                  enable_logit_norm=True, enable_adaptive_norm=adaptive_norm, train_mode="none", sample_from_idx=4)
        var.init_weights(init_adaln=0.5, init_adaln_gamma=5e-5, init_head=0.02, init_std=-1)
        var.head_logits.weight.data.mul_(20)  # logits with some spread, so sampling differs by seed and by text
    return var.eval(), vae.eval()


def text_rows(B: int, seed: int = 0):
    """``2B`` rows: B prompts of different lengths, then B empty prompts (two valid tokens each)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2 * B, T_TEXT, C_TEXT, generator=g)
    mask = torch.zeros(2 * B, T_TEXT, dtype=torch.long)
    for i in range(B):
        mask[i, :3 + 4 * i % (T_TEXT - 3)] = 1
        mask[B + i, :2] = 1
    hidden[B:] = hidden[B:B + 1]  # the empty prompts are one prompt
    pooled = torch.randn(2 * B, C_TEXT, generator=g)
    pooled[B:] = pooled[B:B + 1]
    return dict(encoder_hidden_states=hidden, encoder_attention_mask=mask, encoder_pool_feat=pooled)


def call(var, B, seed=0, **extra):
    kw = dict(B=B, label_B=None, **text_rows(B), g_seed=seed, cfg=4.5, top_k=600, top_p=0.8, more_smooth=False)
    kw.update(extra)
    return kw


# -- the cases -----------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", required=True, help="a checkout of github.com/Davinci-XLab/STAR-T2I")
    args = ap.parse_args()
    _install_stand_ins()
    sys.path.insert(0, os.path.abspath(args.upstream))
    warnings.simplefilter("ignore")
    results = []

    def report(name, status, detail=""):
        results.append(status)
        print(f"{status:4s}  {name}{'  -- ' + detail if detail else ''}", flush=True)

    models = {flash: build(flash)[0] for flash in (False, True)}
    for flash, dtype, B, extra in [
        (False, None, 1, {}), (False, None, 3, {}), (False, None, 2, dict(more_smooth=True)),
        (False, None, 2, dict(sample_version="old", top_k=50)), (False, None, 2, dict(top_k=0, top_p=0.0)),
        (False, torch.bfloat16, 1, {}), (False, torch.bfloat16, 3, {}),
        (True, torch.bfloat16, 1, {}), (True, torch.bfloat16, 3, {}),
    ]:
        var = models[flash]
        name = (f"none == upstream: {'flash' if flash else 'sdpa'}, {'bf16 autocast' if dtype else 'fp32'}, B={B}"
                + "".join(f", {k}={v}" for k, v in extra.items()))
        kw = call(var, B, **extra)
        autocast = torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None)
        try:
            with autocast, contextlib.redirect_stdout(io.StringIO()):
                want = var.autoregressive_infer_cfg(**kw)
        except Exception as e:  # noqa: BLE001 -- upstream itself cannot run this case here
            report(name, "SKIP", f"upstream's own call fails: {type(e).__name__}: {str(e)[:120]}")
            continue
        try:
            with autocast, stagevar.accelerated(var, "none"):
                got = var.autoregressive_infer_cfg(**kw)
            ok = torch.equal(got, want)
            report(name, "PASS" if ok else "FAIL", "" if ok else f"max |diff| {(got - want).abs().max().item():.3g}")
        except Exception as e:  # noqa: BLE001
            report(name, "FAIL", f"{type(e).__name__}: {str(e)[:200]}")

    configs = ["star-d30", "star-d16", StageVARConfig(refine_start=-2, branch="uncond", name="uncond-last-2"),
               StageVARConfig(refine_start=-2, branch="cond", rank_ratio=0.3, name="cond-lowrank-0.3"),
               StageVARConfig(refine_start=-2, branch="both", rank_ratio=0.3, reducer="sample", name="both-sample")]
    for flash, dtype in [(False, None), (True, torch.bfloat16)]:
        var = models[flash]
        for config in configs:
            cname = config if isinstance(config, str) else config.name
            name = f"{cname} runs on upstream's blocks: {'flash' if flash else 'sdpa'}, {'bf16' if dtype else 'fp32'}, B=2"
            autocast = torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None)
            try:
                with autocast, stagevar.accelerated(var, config):
                    a = var.autoregressive_infer_cfg(**call(var, 2, seed=3))
                    b = var.autoregressive_infer_cfg(**call(var, 2, seed=3))
                    modes = [s.mode for s in stagevar.last_report(var).scales]
                ok = torch.equal(a, b) and a.shape[0] == 2 and modes[-1] != "intact"
                report(name, "PASS" if ok else "FAIL", ", ".join(modes[-2:]))
            except Exception as e:  # noqa: BLE001
                report(name, "FAIL", f"{type(e).__name__}: {str(e)[:200]}")

    # text bucketing (off by default for STAR: upstream's encoder pads every prompt to 120 tokens):
    # asked for, the text is padded past T_TEXT; outputs must equal the unpadded calls whatever the
    # first call's check decides
    for flash in (False, True):
        var, _ = build(flash)
        kws = [call(var, 2, seed=s) for s in (0, 1)]
        name = f"text_buckets=({T_TEXT + 8},) on upstream's blocks, {'flash' if flash else 'sdpa'} attention, B=2"
        try:
            with stagevar.accelerated(var, "star-d16", execution="eager", text_buckets=()):
                want = [var.autoregressive_infer_cfg(**kw) for kw in kws]
            with stagevar.accelerated(var, "star-d16", execution="eager", text_buckets=(T_TEXT + 8,)):
                got = [var.autoregressive_infer_cfg(**kw) for kw in kws * 2]
                off = getattr(var, _ATTR).engine.buckets_off
            same = all(torch.equal(g, w) for g, w in zip(got, want * 2))
            report(name, "PASS" if same else "FAIL",
                   ("outputs unchanged; " if same else "outputs differ; ")
                   + (f"the check turned bucketing off: {off[:160]}" if off else "bucketing kept, padded calls bit-identical"))
        except Exception as e:  # noqa: BLE001
            report(name, "FAIL", f"{type(e).__name__}: {str(e)[:200]}")

    sampler, _ = build(False, adaptive_norm=True)
    kw = call(sampler, 1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            want = sampler.autoregressive_infer_cfg(**kw)
        with stagevar.accelerated(sampler, "none"):
            same = torch.equal(sampler.autoregressive_infer_cfg(**kw), want)
            try:
                sampler.autoregressive_infer_cfg(**dict(kw, w_mask=True))
                refused = "not refused"
            except ValueError as e:
                refused = "" if "masked sampler" in str(e) else f"refused with another message: {e}"
        report("enable_adaptive_norm model: none == upstream without w_mask; w_mask=True refused",
               "PASS" if same and not refused else "FAIL", refused)
    except Exception as e:  # noqa: BLE001
        report("enable_adaptive_norm model", "FAIL", f"{type(e).__name__}: {str(e)[:200]}")

    print(f"\n{results.count('PASS')} passed, {results.count('FAIL')} failed, {results.count('SKIP')} skipped")
    return 1 if "FAIL" in results else 0


if __name__ == "__main__":
    sys.exit(main())
