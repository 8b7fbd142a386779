"""stagevar's "none" preset against upstream Infinity's own call, on a CPU, in fp32 and under bf16 autocast.

Not part of CI (it needs a checkout of FoundationVision/Infinity, and is not named ``test_*``)::

    python benchmarks/upstream/infinity_autocast.py --upstream /path/to/Infinity

It builds a tiny upstream ``Infinity`` (published settings: shared AdaLN, 2D RoPE normalised by
``h, w``, bitwise head, block chunks, ``pad_to_multiplier=128``) with random weights and
residual gates near 1, and for each case compares ``stagevar.accelerate(model, "none")`` with the
unpatched ``autoregressive_infer_cfg``: the images with ``torch.equal`` and the bits sampled at
every scale. It prints one PASS/FAIL/SKIP line per case (the first scale whose bits differ on
FAIL) and exits non-zero if any case fails. Cases: fp32 and CPU bf16 autocast; B=1 and B=3 (with
a negative prompt); ``cfg_insertion_layer`` ``[0]`` and ``[-1]``; a 1:1 and a 2:1 schedule
(upstream's 0.06M schedules); ``apply_spatial_patchify=1`` (Infinity-8B's layout; then also the
presets ``infinity-8b`` and ``infinity-8b-paper`` on upstream's blocks, each reproducible from
``g_seed`` and ``restore`` exact); ``fused_norm`` off (the constructor's default; that block path
does not pass ``scale_ind`` on to self-attention) and on; the level embedding before the first
chunk only and before every chunk; CFG 1 at every other scale or only past the schedule; the
published sampler (top-k 900, top-p 0.97); ``nm0=True``; blocks in bf16.

What is stood in for, and why:
- ``flash_attn``: upstream imports it unconditionally and it has no CPU build. The stand-in
  module gives ``flash_attn_func`` and ``flash_attn_varlen_kvpacked_func`` on top of PyTorch SDPA
  and, like the real kernels, refuses fp32 inputs. Nothing else of flash-attn is provided, so
  upstream takes its own fallbacks for the fused ops (``rms_norm_impl``, no fused MLP).
- ``timm`` and ``pytz``, only if they are not installed: upstream imports ``register_model``,
  ``DropPath`` and ``SoftTargetCrossEntropy`` at module level (none does work at inference
  with ``drop_path_rate=0``) and ``pytz`` for log timestamps.
- The VAE: upstream's ``MultiScaleBSQ`` quantizer (its ``indices_to_codes`` is what the
  generation loop calls) with a small convolutional decoder; upstream's decoder module imports
  torchvision and imageio and is the same call in both paths.
- ``--fused-norm``: the published ``tools/run_infinity.py`` builds the model with
  ``fused_norm=True``, whose norm functions are wrapped in ``torch.compile``. ``eager`` (default)
  runs the functions that ``torch.compile`` wraps, unwrapped; ``compiled`` keeps them compiled
  (needs a C++ compiler; each shape, batch size and autocast state compiles anew, so the
  script raises dynamo's recompile limit).

Upstream's ``bf16=1`` (its blocks cast to bfloat16, as ``tools/run_infinity.py`` does by
default) cannot run on a CPU: the blocks' ``ca_norm`` is a ``LayerNorm`` with bf16 weights fed
fp32 activations, which CUDA autocast runs in fp32 but CPU autocast does not (``mixed dtype
(CPU): expect parameter to have scalar type of Float``). The script tries that case and
reports it as SKIP with the error.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import itertools
import math
import sys
import time
import types
import warnings
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# stand-ins for imports that have no CPU build (or are not installed)
def _refuse_fp32(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError(f"flash-attn stand-in: FlashAttention only supports fp16 and bf16, got {t.dtype}")


def _flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **unused):
    """``(B, L, H, c)`` queries, keys and values -> ``(B, L, H, c)``."""
    _refuse_fp32(q, k, v)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         scale=softmax_scale, is_causal=causal)
    return out.transpose(1, 2)


def _flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                     softmax_scale=None, causal=False, **unused):
    """Packed queries ``(Nq, H, c)`` and keys/values ``(Nk, 2, H, c)``, sequence ``i`` being rows
    ``cu_seqlens[i]:cu_seqlens[i + 1]`` of each -> ``(Nq, H, c)``."""
    _refuse_fp32(q, kv)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs = []
    for i in range(len(cq) - 1):
        q_HLc = q[cq[i]:cq[i + 1]].transpose(0, 1)
        k_LHc, v_LHc = kv[ck[i]:ck[i + 1]].unbind(1)
        o = F.scaled_dot_product_attention(q_HLc, k_LHc.transpose(0, 1), v_LHc.transpose(0, 1), scale=softmax_scale,
                                           is_causal=causal)
        outs.append(o.transpose(0, 1))
    return torch.cat(outs, dim=0)


class _DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0, *unused, **unused_kw):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.training and self.drop_prob > 0:
            raise RuntimeError("timm stand-in: DropPath only runs in eval mode")
        return x


def install_stand_ins() -> List[str]:
    """Put the stand-in modules into ``sys.modules``; returns what was stood in."""
    done = []
    fa = types.ModuleType("flash_attn")
    fa.flash_attn_func = _flash_attn_func
    fa.flash_attn_varlen_kvpacked_func = _flash_attn_varlen_kvpacked_func
    sys.modules["flash_attn"] = fa
    done.append("flash_attn (SDPA)")
    if importlib.util.find_spec("timm") is None:
        timm, models = types.ModuleType("timm"), types.ModuleType("timm.models")
        layers, loss = types.ModuleType("timm.models.layers"), types.ModuleType("timm.loss")
        models.register_model = lambda fn: fn
        layers.DropPath = _DropPath
        layers.drop_path = lambda x, *a, **k: x
        loss.SoftTargetCrossEntropy = type("SoftTargetCrossEntropy", (nn.Module,), {})
        timm.models, timm.loss, models.layers = models, loss, layers
        sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers, "timm.loss": loss})
        done.append("timm")
    if importlib.util.find_spec("pytz") is None:
        pytz = types.ModuleType("pytz")
        pytz.timezone = lambda name: datetime.timezone.utc
        sys.modules["pytz"] = pytz
        done.append("pytz")
    return done


# ----------------------------------------------------------------------------------------------
class TinyVAE(nn.Module):
    """Upstream's multi-scale BSQ quantizer with a small decoder: codes ``(B, d, h, w)`` -> images in [-1, 1]."""

    def __init__(self, codebook_dim: int, ch: int = 16, num_up: int = 2):
        super().__init__()
        from infinity.models.bsq_vae.multiscale_bsq import MultiScaleBSQ

        self.embed_dim = self.codebook_dim = codebook_dim
        self.vocab_size = 2 ** codebook_dim
        self.quantizer = MultiScaleBSQ(dim=codebook_dim, codebook_size=2 ** codebook_dim)
        layers: List[nn.Module] = [nn.Conv2d(codebook_dim, ch, 3, padding=1), nn.SiLU()]
        for _ in range(num_up):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU()]
        layers.append(nn.Conv2d(ch, 3, 3, padding=1))
        self.decoder = nn.Sequential(*layers)

    def decode(self, z_BdHW: torch.Tensor) -> torch.Tensor:
        return self.decoder(z_BdHW).clamp(-1, 1)


def randomise(model: nn.Module, gate: float, seed: int) -> None:
    """Random weights with residual gates near ``gate`` (upstream's init leaves the blocks almost identity)."""
    g = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.data.copy_((torch.randn(t.shape, generator=g) * std + mean).to(t.dtype))

    depth = len(model.unregistered_blocks)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            normal(m.weight, m.in_features ** -0.5)
            if m.bias is not None:
                normal(m.bias, 0.02)
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            normal(m.weight, 0.1, 1.0)
            normal(m.bias, 0.02)
        elif isinstance(m, nn.Embedding):
            normal(m.weight, 0.1)
    normal(model.pos_start, 0.1)
    normal(model.text_norm.weight, 0.1, 1.0)
    for b in model.unregistered_blocks:
        for lin in (b.sa.proj, b.ca.proj, b.ffn.fc2):
            lin.weight.data.div_(math.sqrt(2 * depth))
        normal(b.sa.q_bias, 0.02)
        normal(b.sa.v_bias, 0.02)
        normal(b.ca.v_bias, 0.02)
        gss = b.ada_gss.data
        normal(gss, 0.1)
        gss[:, :, :2] += gate  # gamma1, gamma2
    lin = model.shared_ada_lin[-1]
    lin.weight.data.mul_(0.1)


def build_upstream(codebook_dim: int, fused_norm: str, lvl_only_first: int, seed: int, gate: float, nm0: bool = False,
                   patchify: int = 0):
    from infinity.models import infinity as up_inf

    vae = TinyVAE(codebook_dim)
    with contextlib.redirect_stdout(io.StringIO()):  # upstream's constructor prints its config
        model = up_inf.Infinity(
            vae_local=vae, text_channels=128, text_maxlen=32, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4.0,
            shared_aln=True, head_aln=True, cross_attn_layer_scale=-1.0, cos_attn=True, block_chunks=2,
            customized_flash_attn=False, fused_norm=fused_norm != "off", pad_to_multiplier=128,
            add_lvl_embeding_only_first_block=lvl_only_first, use_bit_label=1, rope2d_each_sa_layer=1,
            rope2d_normalized_by_hw=2, inference_mode=True, train_h_div_w_list=[1.0], nm0=nm0,
            apply_spatial_patchify=patchify)
    if fused_norm == "eager":
        for m in model.modules():
            f = getattr(m, "fused_norm_func", None)
            if f is not None:
                m.fused_norm_func = getattr(f, "_torchdynamo_orig_callable", None) or f.__wrapped__
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        randomise(model, gate, seed)
        for p in vae.parameters():
            p.data.normal_(0, 0.2)
    model.eval()
    vae.eval()
    return model, vae


def text_condition(B: int, Ct5: int, lens: List[int], g: torch.Generator):
    """Upstream's packed ``(kv_compact, lens, cu_seqlens_k, max_seqlen_k)`` for ``B`` random texts."""
    lens = lens[:B]
    kv = torch.randn(sum(lens), Ct5, generator=g)
    cu = F.pad(torch.tensor(lens).cumsum(0), (1, 0)).to(torch.int32)
    return kv, lens, cu, max(lens)


SCHEDULES = {"1:1": 1.0, "2:1": 0.5}  # width:height -> upstream's h_div_w template


def schedule(name: str):
    from infinity.utils.dynamic_resolution import dynamic_resolution_h_w

    return [(1, h, w) for _, h, w in dynamic_resolution_h_w[SCHEDULES[name]]["0.06M"]["scales"]]


def call_kwargs(vae, name: str, B: int, insertion: int, cfg_mode: str, sampler: str, seed: int):
    g = torch.Generator().manual_seed(seed + 17 * B)
    sched = schedule(name)
    K = len(sched)
    cfg_list = {"3": [3.0] * K, "alternating": [1.0 if si % 2 else 3.0 for si in range(K)],
                "tail": [1.0] * K + [3.0]}[cfg_mode]  # tail: guidance only past the schedule
    top_k, top_p = (900, 0.97) if sampler == "published" else (0, 0.0)
    kw = dict(vae=vae, scale_schedule=sched, label_B_or_BLT=text_condition(B, 128, [6, 3, 9], g), B=B,
              negative_label_B_or_BLT=text_condition(B, 128, [4, 4, 4], g) if B > 1 else None, g_seed=seed,
              cfg_list=cfg_list, tau_list=[1.0] * K, top_k=top_k, top_p=top_p, cfg_sc=3, returns_vemb=1,
              ratio_Bl1=None, gumbel=0, norm_cfg=False, cfg_exp_k=0.0, cfg_insertion_layer=[insertion], vae_type=1,
              softmax_merge_topk=-1, ret_img=True, trunk_scale=1000, gt_leak=-1, gt_ls_Bl=None, inference_mode=True,
              sampling_per_bits=1)
    return kw


def record_bits(vae) -> List[torch.Tensor]:
    """Record the bits upstream's loop hands to ``indices_to_codes`` (per scale)."""
    seen: List[torch.Tensor] = []
    lfq = vae.quantizer.lfq
    inner = type(lfq).indices_to_codes.__get__(lfq)

    def spy(indices, *a, **k):
        seen.append(indices.detach().clone())
        return inner(indices, *a, **k)

    lfq.indices_to_codes = spy
    return seen


def compare(model, vae, kw, precision: str) -> str:
    import stagevar

    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16-autocast" else contextlib.nullcontext
    bits = record_bits(vae)
    try:
        with ctx():
            want = model.autoregressive_infer_cfg(**kw)
    except Exception as e:  # upstream itself does not run this case on a CPU
        del vae.quantizer.lfq.indices_to_codes
        return f"SKIP upstream's own call fails on a CPU: {type(e).__name__}: {str(e).splitlines()[0]}"
    want_bits = list(bits)
    bits.clear()
    try:
        with ctx(), stagevar.accelerated(model, "none"):
            got = model.autoregressive_infer_cfg(**kw)
    finally:
        del vae.quantizer.lfq.indices_to_codes
    same_img = torch.equal(got[2], want[2]) and got[0] == want[0] and got[1] == want[1]
    got_bits = list(bits)
    first = next((si for si, (a, b) in enumerate(zip(got_bits, want_bits)) if not torch.equal(a, b)), None)
    if len(got_bits) != len(want_bits):
        first = min(len(got_bits), len(want_bits))
    if same_img and first is None:
        return "PASS"
    diff = (got[2].int() - want[2].int()).abs()
    return (f"FAIL bits differ from scale {first}; images: {int((diff > 0).sum())} of {diff.numel()} values differ "
            f"(max {int(diff.max())})" if first is not None else f"FAIL images differ (max {int(diff.max())}), bits equal")


def presets_run(model, vae, name: str, seed: int) -> str:
    """A preset on upstream's blocks: reproducible from ``g_seed``, something accelerated, ``restore`` exact."""
    import stagevar

    kw = call_kwargs(vae, "1:1", 2, 0, "3", "plain", seed)
    want = model.autoregressive_infer_cfg(**kw)[2]
    try:
        with stagevar.accelerated(model, name):
            a = model.autoregressive_infer_cfg(**kw)[2]
            b = model.autoregressive_infer_cfg(**kw)[2]
            modes = [sc.mode for sc in stagevar.last_report(model).scales]
        back = model.autoregressive_infer_cfg(**kw)[2]
    except Exception as e:  # noqa: BLE001
        return f"FAIL {type(e).__name__}: {str(e)[:200]}"
    problems = [what for what, bad in [("not reproducible from g_seed", not torch.equal(a, b)),
                                       ("nothing accelerated", all(mo == "intact" for mo in modes)),
                                       ("restore not exact", not torch.equal(back, want)),
                                       ("image shape differs", a.shape != want.shape)] if bad]
    return ("FAIL " + "; ".join(problems)) if problems else "PASS " + ", ".join(modes[-3:])


def full_rank_run(model, vae, seed: int) -> str:
    """Full-rank ``sample`` units (every token its own representative) on upstream's blocks reproduce
    upstream's call up to float rounding: the RoPE of the representatives is the one each block
    would apply to those tokens."""
    import stagevar

    kw = call_kwargs(vae, "1:1", 2, 0, "3", "plain", seed)
    want = model.autoregressive_infer_cfg(**kw)[2]
    cfg = stagevar.StageVARConfig(refine_start=-3, branch="both", rank_ratio=1.0, reducer="sample", name="full-rank")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stagevar.NoAccelerationWarning)
        with stagevar.accelerated(model, cfg):
            got = model.autoregressive_infer_cfg(**kw)[2]
    diff = int((got.int() - want.int()).abs().max())
    return "PASS" if diff <= 1 else f"FAIL images differ by up to {diff} (of 255)"


def buckets_run(model, vae, precision: str, B: int, config: str, seed: int) -> str:
    """Text bucketing on upstream's blocks: three texts sets of other lengths, each called twice with
    ``text_buckets=(16, 32)`` (the first call of a bucket is checked against the unpadded call, the
    second runs padded if the check kept bucketing), against the same calls unpadded."""
    import stagevar
    from stagevar.api import _ATTR

    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16-autocast" else contextlib.nullcontext
    kws = []
    for i, lens in enumerate(([6, 3, 9], [2, 11, 5], [7, 7, 1])):
        kw = call_kwargs(vae, "1:1", B, 0, "3", "plain", seed + i)
        kw["label_B_or_BLT"] = text_condition(B, 128, lens, torch.Generator().manual_seed(seed + i))
        kws.append(kw)
    with ctx():
        with stagevar.accelerated(model, config, execution="eager", text_buckets=()):
            want = [model.autoregressive_infer_cfg(**kw)[2] for kw in kws]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stagevar.TextBucketWarning)
            with stagevar.accelerated(model, config, execution="eager", text_buckets=(16, 32)):
                padded = 0
                for _ in range(2):
                    for kw, w in zip(kws, want):
                        got = model.autoregressive_infer_cfg(**kw)[2]
                        padded += bool(stagevar.last_report(model).text[1])
                        if not torch.equal(got, w):
                            return f"FAIL a call with text_buckets differs from the unpadded call ({stagevar.last_report(model).text})"
                off = getattr(model, _ATTR).engine.buckets_off
    if off:
        return f"PASS outputs unchanged; the check turned bucketing off: {off}"
    return f"PASS bucketing kept: {padded} of 6 calls ran padded, bit-identical to unpadded"


def cases(quick: bool, fused_norm: str):
    """``(model settings, [(precision, B, cfg_insertion_layer, schedule, cfg mode, sampler), ...])``."""
    for norm, lvl in itertools.product(["off", fused_norm], [1, 0]):
        runs = []
        for precision, B, insertion, sched in itertools.product(["fp32", "bf16-autocast"], [1, 3], [0, -1], SCHEDULES):
            if quick and (B, insertion) == (3, -1):
                continue
            runs.append((precision, B, insertion, sched, "3", "plain"))
            if norm == "off" and lvl == 1 and not quick:
                runs += [(precision, B, insertion, sched, mode, sampler)
                         for mode, sampler in [("alternating", "plain"), ("tail", "plain"), ("3", "published")]]
        yield dict(fused_norm=norm, lvl_only_first=lvl), runs
    # nm0=True: a LayerNorm (norm0_ve) before word_embed
    yield dict(fused_norm="off", lvl_only_first=1, nm0=True), [(p, B, 0, "2:1", "3", "plain")
                                                                for p in ["fp32", "bf16-autocast"] for B in [1, 3]]
    # apply_spatial_patchify=1, as every public Infinity-8B checkpoint is built: tokens are 2x2 patches
    yield dict(fused_norm="off", lvl_only_first=1, patchify=1), [
        (p, B, ins, sched, "3", sampler) for p in ["fp32", "bf16-autocast"] for B in [1, 3] for ins in [0, -1]
        for sched in SCHEDULES for sampler in (["plain", "published"] if (B, ins) == (1, 0) else ["plain"])]
    # upstream's default bf16=1 (tools/run_infinity.py): the blocks cast to bfloat16
    yield dict(fused_norm=fused_norm, lvl_only_first=1, bf16_blocks=True), [("bf16-autocast", 1, 0, "1:1", "3", "plain")]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="a checkout of FoundationVision/Infinity")
    ap.add_argument("--fused-norm", choices=["eager", "compiled"], default="eager",
                    help="how to run the fused_norm=True cases' norm functions (see the module docstring)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gate", type=float, default=1.0, help="residual gate magnitude of the random weights")
    ap.add_argument("--quick", action="store_true", help="fewer cases")
    args = ap.parse_args(argv)

    stood_in = install_stand_ins()
    sys.path.insert(0, args.upstream)
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast", category=FutureWarning)  # upstream's
    import infinity.models.infinity  # noqa: F401  (fails here if a stand-in is missing)
    if args.fused_norm == "compiled":  # every shape, batch and autocast state compiles anew; fullgraph fails at 8
        torch._dynamo.config.recompile_limit = 256

    print(f"torch {torch.__version__}; stood in: {', '.join(stood_in)}; upstream: {args.upstream}")
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    t0 = time.perf_counter()
    for settings, runs in cases(args.quick, args.fused_norm):
        settings = dict(settings)
        bf16_blocks = settings.pop("bf16_blocks", False)
        model, vae = build_upstream(codebook_dim=8, seed=args.seed, gate=args.gate, **settings)
        if bf16_blocks:
            for b in model.unregistered_blocks:
                b.bfloat16()
        label = " ".join(f"{k}={v}" for k, v in settings.items()) + (" bf16_blocks" if bf16_blocks else "")
        for precision, B, insertion, sched, cfg_mode, sampler in runs:
            verdict = compare(model, vae, call_kwargs(vae, sched, B, insertion, cfg_mode, sampler, args.seed), precision)
            word = verdict.split()[0]
            counts[word] += 1
            print(f"{word:4s}  {label:42s} {precision:13s} B={B} cfg_insertion_layer=[{insertion:2d}] {sched} "
                  f"cfg={cfg_mode:11s} sampler={sampler:9s}" + ("" if word == "PASS" else f"  -- {verdict[5:]}"),
                  flush=True)
        if not bf16_blocks:
            verdict = full_rank_run(model, vae, args.seed)
            word = verdict.split()[0]
            counts[word] += 1
            print(f"{word:4s}  {label:42s} full-rank 'sample' units == upstream (max 1/255), B=2 1:1"
                  + ("" if word == "PASS" else f"  -- {verdict[5:]}"), flush=True)
        if settings == dict(fused_norm="off", lvl_only_first=1):
            for precision, B, config in itertools.product(["fp32", "bf16-autocast"], [1, 3], ["none", "infinity-2b"]):
                verdict = buckets_run(model, vae, precision, B, config, args.seed)
                word = verdict.split()[0]
                counts[word] += 1
                print(f"{word:4s}  {label:42s} {precision:13s} B={B} text_buckets=(16, 32) {config}  -- {verdict[5:]}",
                      flush=True)
        if settings.get("patchify"):
            for name in ("infinity-8b", "infinity-8b-paper"):
                verdict = presets_run(model, vae, name, args.seed)
                word = verdict.split()[0]
                counts[word] += 1
                print(f"{word:4s}  {label:42s} preset {name} on upstream's blocks, B=2 1:1  -- {verdict[5:]}", flush=True)
    print(f"{sum(counts.values())} cases: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP "
          f"({time.perf_counter() - t0:.0f} s)")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
