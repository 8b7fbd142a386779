"""stagevar's HART adapter against upstream HART's own call, on a CPU.

Not part of CI (it needs a checkout of mit-han-lab/hart and ``transformers==4.42.2`` + ``scipy``,
which upstream imports; stagevar needs neither)::

    git clone https://github.com/mit-han-lab/hart /tmp/hart_up      # checked at e28a41f
    pip install "transformers==4.42.2" scipy
    python benchmarks/upstream/hart_suite.py --upstream /tmp/hart_up

It builds a small upstream ``HARTForT2I`` (``attn_type="llama"``, AdaLN, context norm, the
diffusion head with 4 IDDPM steps) and upstream's ``HARTAutoEncoder`` (``var_hybrid`` quantizer),
random weights, and for each case compares ``stagevar.accelerate(model, "none")`` with the
unpatched ``autoregressive_infer_cfg`` by ``torch.equal`` on the images, each call starting from
the same global torch and numpy generator states (upstream's diffusion head and MaskGIT order draw
from them), and compares those states after the call too. Then it runs the HART presets and
one-branch / low-rank configs through upstream's blocks, checking every KV-cache length after
every scale, that each is reproducible, and that restore is exact. One PASS/FAIL line per case;
exit status 1 on any FAIL.

Cases: B = 1 and 3 (prompts of 3, 7, 12 tokens, right-padded as upstream's ``encode_prompts``
pads them); fp32, CPU bf16 and fp16 autocast; ``more_smooth``, ``top_p``, ``final_stage=1``,
``g_seed=None``; block pooling ``max`` and ``avg``; SDPA attention and (bf16) the flash layout; fp16 autocast.

What is stood in for, and why:
- ``hart_backend.fused_kernels`` (upstream's compiled CUDA extension, imported at module level by
  ``basic_hart.py``): ``rms_norm(out, x, weight, eps, use_quant)`` in PyTorch, float32 inside.
- ``.cuda()``: upstream hard-codes it (``mask_by_order``, ``sample_orders``, the diffusion head's
  noise, the VAE); on this CPU-only machine ``Tensor.cuda`` and ``Module.cuda`` return the object
  itself. stagevar's code never calls it.
- the tokenizer's weights: ``HARTAutoEncoderWithDisc.from_pretrained`` returns a freshly built
  upstream ``HARTAutoEncoder`` (random weights) instead of reading a checkpoint.
- ``flash_attn`` (bf16 cases only): ``flash_attn_func`` by PyTorch SDPA, refusing fp32 like the
  real kernel, to exercise the BLHc cache layout.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import types
import warnings

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..")))  # this checkout's stagevar

import stagevar  # noqa: E402
from stagevar import engine as _engine  # noqa: E402

sys.path.insert(0, HERE)
from star_suite import _flash_attn_func  # noqa: E402 -- the same flash-attn stand-in as STAR's check

_engine.DEBUG_CHECKS = True  # every block's KV-cache length checked after every scale


# -- stand-ins ------------------------------------------------------------------------------------
def _rms_norm(out, x, weight, eps, use_quant):
    h = x.float()
    out.copy_((h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(out.dtype))


def _install_stand_ins() -> None:
    backend = types.ModuleType("hart_backend")
    fused = types.ModuleType("hart_backend.fused_kernels")
    fused.rms_norm = _rms_norm
    backend.fused_kernels = fused
    sys.modules["hart_backend"], sys.modules["hart_backend.fused_kernels"] = backend, fused
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
        nn.Module.cuda = lambda self, *a, **k: self


# -- the upstream model ------------------------------------------------------------------------------
PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8)
PRESETS = ("hart-0.7b", "hart-0.7b-paper", "fastvar-hart", "uncond-last-2", "cond-last-2")
T_TEXT, C_TEXT = 16, 32


def build(pooling: str = "max", flash: bool = False, depth: int = 3, seed: int = 0):
    import hart.modules.models.transformer.hart_transformer_t2i as t2i
    import hart.modules.networks.basic_hart as basic
    from hart.modules.models.autoencoder import HARTAutoEncoder
    from hart.modules.models.autoencoder.configuration import HARTAutoEncoderConfig
    from hart.modules.models.transformer.configuration import HARTForT2IConfig

    basic.flash_attn_func = _flash_attn_func if flash else None
    vae_cfg = HARTAutoEncoderConfig(vocab_size=4096, z_channels=8, ch=32, ch_mult=(1, 2), v_patch_nums=PATCH_NUMS,
                                    quantizer_type="var_hybrid", test_mode=True, share_quant_resi=4)

    class _Tokenizer:  # from_pretrained: a fresh upstream tokenizer, random weights
        @staticmethod
        def from_pretrained(path):
            return types.SimpleNamespace(vae=HARTAutoEncoder(vae_cfg))

    t2i.HARTAutoEncoderWithDisc = _Tokenizer
    cfg = HARTForT2IConfig(vae_path="unused", context_token=T_TEXT, context_dim=C_TEXT, depth=depth, embed_dim=128,
                           num_heads=4, patch_nums=PATCH_NUMS, attn_type="llama", mlp_type="llama",
                           sep_aln_pooling_mode=pooling, use_context_norm=True, diff_width=64, diff_depth=2,
                           num_sampling_steps="4", flash_if_available=flash, fused_if_available=False)
    with contextlib.redirect_stdout(io.StringIO()), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = t2i.HARTForT2I(cfg)
        model.init_weights(init_std=-1)
        model.head.weight.data.mul_(30)  # logits with some spread, so sampling differs by seed and by text
        for b in model.blocks:  # AdaLN away from identity, so the condition matters
            b.ada_lin[-1].weight.data.normal_(0, 0.02)
    return model.eval()


def text(B: int, seed: int = 0):
    """``B`` prompts of 3, 7, 12 tokens, right-padded to ``T_TEXT`` (pad features: one pad token)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, T_TEXT, C_TEXT, generator=g)
    mask = torch.zeros(B, T_TEXT, dtype=torch.bool)
    for i in range(B):
        mask[i, :(3, 7, 12)[i % 3]] = True
    feats[~mask] = torch.randn(C_TEXT, generator=g)
    return dict(label_B=feats, context_mask=mask, context_position_ids=torch.cumsum(mask, dim=1) - 1)


def run(model, kw, autocast):
    """One call from fixed global generators, under CPU autocast to ``autocast`` (a dtype) or none."""
    torch.manual_seed(7)
    np.random.seed(7)
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        out = model.autoregressive_infer_cfg(**kw)
    return out, torch.get_rng_state(), np.random.get_state()[1].copy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="a checkout of mit-han-lab/hart")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.abspath(args.upstream))
    _install_stand_ins()
    warnings.simplefilter("ignore")
    failures = 0

    def report(ok: bool, what: str, detail: str = "") -> None:
        nonlocal failures
        failures += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {what}{'  ' + detail if detail else ''}", flush=True)

    from hart.modules.networks import basic_hart

    variants = [{}, dict(more_smooth=True), dict(top_p=0.8), dict(final_stage=1), dict(g_seed=None)]
    bf16, fp16 = torch.bfloat16, torch.float16
    for pooling, flash, autocast in (("max", False, None), ("avg", False, None), ("max", False, bf16),
                                     ("max", True, bf16), ("max", False, fp16)):
        model = build(pooling, flash)
        for B in (1, 3):
            for extra in variants:
                kw = {**dict(B=B, **text(B), g_seed=3, cfg=4.5), **extra}
                want, want_torch, want_np = run(model, kw, autocast)
                with stagevar.accelerated(model, "none"):
                    got, got_torch, got_np = run(model, kw, autocast)
                same_rng = torch.equal(got_torch, want_torch) and bool((got_np == want_np).all())
                report(torch.equal(got, want) and same_rng,
                       f"none == upstream  pooling={pooling} flash={flash} autocast={autocast} B={B} {extra or ''}",
                       "" if same_rng else "global generator states differ after the call")
        kw = dict(B=2, **text(2), g_seed=5, cfg=4.5)
        want, _, _ = run(model, kw, autocast)
        cache0 = basic_hart.get_position_ids.cache_info().currsize
        for name in PRESETS:
            with stagevar.accelerated(model, name):
                a, _, _ = run(model, kw, autocast)
                b, _, _ = run(model, kw, autocast)
                c, _, _ = run(model, dict(kw, g_seed=6), autocast)
                modes = [s.mode for s in stagevar.last_report(model).scales]
            report(torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, want),
                   f"{name} reproducible, differs by seed and from upstream  pooling={pooling} flash={flash} "
                   f"autocast={autocast}", f"last scales: {modes[-2:]}")
        grew = basic_hart.get_position_ids.cache_info().currsize - cache0
        report(grew == 0, f"upstream's position cache unchanged by the accelerated calls  pooling={pooling}",
               f"grew by {grew}")
        stagevar.accelerate(model, "hart-0.7b-paper")
        stagevar.restore(model)
        back, _, _ = run(model, kw, autocast)
        report(torch.equal(back, want), f"restore exact  pooling={pooling} flash={flash} autocast={autocast}")
    print(f"{'all passed' if not failures else f'{failures} FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
