"""HART (mit-han-lab/hart, ``HARTForT2I`` in ``hart/modules/models/transformer/hart_transformer_t2i.py``),
duck-typed on its names.

Follows ``HARTForT2I.autoregressive_infer_cfg`` in github.com/mit-han-lab/hart at commit e28a41f
(the published text-to-image path: ``attn_type="llama"``, AdaLN on, no cross-attention):

- scale 0 is the text: the ``T = context_token`` context rows of ``B`` prompts then ``B`` zero rows
  (``context_embed(context_norm(...))``), ``context_mask`` of the zero rows keeping position 0,
  their ``context_position_ids`` 0; the blocks cache the context's keys and values; the 1x1 map is
  sampled from the logits of the last context position. The schedule stagevar plans on says so:
  scale 0 is ``(1, T)`` (``T`` tokens computed), then ``(pn, pn)``;
- the blocks get the un-pooled condition, the mask and the position ids, and pool the condition
  themselves; the head pools it by max over every position;
- guidance ``t = cfg * si / (K - 1)``; the last scale reuses the ratio of the scale before it;
  ``top_k`` is not read (upstream samples with 600 before scale 7 and 300 from there on);
- the last scale is MaskGIT with ``num_maskgit_iters=1`` (every token at once; the order is still
  drawn from numpy's global generator, ``B`` shuffles, as upstream) plus the diffusion head's
  residual (``diffloss.sample``, the global torch generator), added to ``f_hat`` as is.

One CFG branch cuts every block's KV cache (the context prefix included), ``next_x``, the
condition, ``context_mask`` and ``context_position_ids`` together; on the last scale the head then
runs on the kept rows through its unguided path (``cfg=1.0``: upstream's own no-guidance branch).

Low-rank units run a block's attention on the representatives with their own 2-D RoPE coordinates
(computed here, so upstream's position cache, keyed on tensor identity, never grows); the rest of
the block is its own modules. Plans that put low rank on scale 0 (the text) or scale 1 (restored
from the text) are refused.

Refuses: ``num_maskgit_iters`` other than 1; models with ``disable_aln``, ``shared_aln``,
cross-attention, the timestep level embedding or ``gpt2`` attention (no published HART uses them);
``label_B`` that is not ``(B, context_token, context_dim)``; a call without ``context_mask`` or
``context_position_ids``; arguments it does not implement. Under CUDA graphs a call whose last
scale runs the diffusion head runs eagerly (its noise comes from the global generators, which a
replay cannot reproduce).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._varloop import VARLoopAdapter, sample_codes
from .base import CallState, UnsupportedModelError, kv_token_dim


@dataclass
class _HARTCall(CallState):
    cfg: float
    top_p: float
    more_smooth: bool
    final_stage: Any
    cond: torch.Tensor          # (rows, T, D): the context embedding, un-pooled (upstream's cond_BD)
    cond_gss: torch.Tensor      # shared_ada_lin(cond): what the blocks get (upstream's cond_BD_or_gss)
    ctx_pos: torch.Tensor       # (rows, T) context position ids
    ctx_mask: torch.Tensor      # (rows, T) context mask
    lvl_pos: torch.Tensor       # (1, T + sum pn^2 - 1, C) level embedding (+ absolute positions)
    f_hat: torch.Tensor         # (B, Cvae, H, W)
    sample: Any = None
    gumbel: Any = None
    rope: Optional[tuple] = field(default=None)  # (positions, cos, sin) of the current low-rank unit


def _pooling(x: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Upstream's ``context_pooling``: the masked mean (``avg``) or the max (``max``) over the text."""
    if mode == "max":
        return x.max(1, keepdim=False).values
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m / m.sum(1).clamp_(1).unsqueeze(1)).sum(1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class HARTAdapter(VARLoopAdapter):
    family = "hart"
    required = ("patch_nums", "blocks", "context_token", "context_embed", "context_norm", "lvl_embed", "lvl_1L",
                "shared_ada_lin", "word_embed", "head_nm", "head", "decoder_norm", "diffloss", "last_level_pns",
                "vae_quant_proxy", "vae_proxy", "Cvae", "first_l", "get_logits", "autoregressive_infer_cfg")
    row_fields = ("cond", "cond_gss", "ctx_pos", "ctx_mask")
    consumed = frozenset({"B", "label_B", "g_seed", "cfg", "top_k", "top_p", "more_smooth", "context_position_ids",
                          "context_mask", "final_stage", "num_maskgit_iters"})
    takes_prompts = True

    def __init__(self, model: nn.Module):
        why = None  # checked before VARLoopAdapter's own block check, so a HART model hears why
        if getattr(model, "attn_type", "llama") != "llama":
            why = f"attn_type={model.attn_type!r} (stagevar follows the published 'llama' attention)"
        elif getattr(model, "use_timestep_embed", False):
            why = "use_timestep_embed=True (a timestep level embedding, in no published checkpoint)"
        elif getattr(model, "disable_aln", False):
            why = "disable_aln=True (blocks without AdaLN, in no published checkpoint)"
        elif getattr(model, "use_cross_attn", False):
            why = "use_cross_attn=True (cross-attention to the text, in no published checkpoint)"
        elif int(model.context_token) < 1 or model.first_l != model.context_token:
            why = "it has no text prefix (context_token < 1): a class-conditional HART"
        for i, b in enumerate(model.blocks):
            if why is None and (getattr(b, "shared_aln", False) or getattr(b, "disable_aln", False)):
                why = f"block {i} has shared_aln or disable_aln set"
            if why is None and not (hasattr(b, "attn") and hasattr(b.attn, "kv_caching") and hasattr(b, "ada_lin")):
                why = f"block {i} is not upstream's AdaLNSelfAttn (no attn.kv_caching or ada_lin)"
        if why is not None:
            raise UnsupportedModelError(f"stagevar does not support this HART model: {why}")
        super().__init__(model)

    #: The authors' table, measured on the trained HART-0.7B (``hart-0.7b`` holds the reference model's
    #: calibration, random weights: see presets.py).
    default_preset = "hart-0.7b-paper"

    # -- what the loop reads (blocks, helpers, graphed modules, final tensors, skip_scale, decoder: VAR's loop)
    def device(self) -> torch.device:
        return self.model.lvl_1L.device

    def default_schedule(self) -> List[Tuple[int, int]]:
        pns = self.model.patch_nums
        return [(1, int(self.model.context_token))] + [(pn, pn) for pn in pns[1:]]

    def check_plan(self, plans: Sequence[Any]) -> None:
        from ..config import ConfigError

        for p in plans[:2]:
            if p.lowrank and not p.skipped:
                what = "the text prefix" if p.index == 0 else "the first image scale, whose restoration would read the text prefix's output"
                raise ConfigError(f"HART: low rank on scale {p.index} ({what}) is not meaningful; reduce scales 2 "
                                  f"and later only (rank_ratios keys >= 2, or negative keys that land there)")

    def graph_reason(self, st: _HARTCall, plans: Sequence[Any]) -> str:
        last = plans[-1] if plans else None
        if st.final_stage == 0 and last is not None and not last.skipped:
            return ("HART's last scale samples its diffusion head from the global torch generator, which a replay "
                    "cannot reproduce")
        return ""

    # -- a call ------------------------------------------------------------------------------------
    def begin(self, args: tuple, kwargs: dict, cache_condition: bool = False) -> _HARTCall:
        m = self.model
        a = self.bind_call(args, kwargs)
        B = int(a["B"])
        iters = a.get("num_maskgit_iters", 1)
        if isinstance(iters, bool) or not isinstance(iters, numbers.Integral) or iters != 1:
            raise ValueError(f"num_maskgit_iters={iters!r}: stagevar's HART loop runs the last scale's MaskGIT in one "
                             f"step (every token at once, upstream's default). Call with num_maskgit_iters=1, or "
                             f"stagevar.restore(model) to generate with the original method.")
        label, pos, mask = a.get("label_B"), a.get("context_position_ids"), a.get("context_mask")
        T, Ct = int(m.context_token), int(m.context_embed.in_features)
        if not isinstance(label, torch.Tensor) or tuple(label.shape) != (B, T, Ct):
            got = tuple(label.shape) if isinstance(label, torch.Tensor) else type(label).__name__
            raise ValueError(f"label_B must be the prompts' text features, shaped (B, context_token, context_dim) = "
                             f"({B}, {T}, {Ct}); got {got}")
        for name, t in (("context_position_ids", pos), ("context_mask", mask)):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (B, T):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must be a ({B}, {T}) tensor (B rows of context_token), as upstream's "
                                 f"encode_prompts returns it; got {got}")
        cfg = a.get("cfg", 1.5)
        if isinstance(cfg, bool) or not isinstance(cfg, numbers.Real):
            raise TypeError(f"cfg must be one number (HART ramps it over the scales), got {type(cfg).__name__}")
        rng = self.seeded_generator(a.get("g_seed"))
        cond = m.context_embed(m.context_norm(torch.cat((label, torch.zeros_like(label)), dim=0)))
        ctx_pos = torch.cat((pos, torch.zeros_like(pos)), dim=0)
        ctx_mask = torch.cat((mask, torch.zeros_like(mask)))
        ctx_mask[B:, 0] = 1
        lvl_pos = m.lvl_embed(m.lvl_1L)
        if getattr(m, "pos_1LC", None) is not None:
            lvl_pos = lvl_pos + m.pos_1LC
        first = cond.expand(2 * B, m.first_l, -1)
        if getattr(m, "pos_start", None) is not None:
            first = first + m.pos_start.expand(2 * B, m.first_l, -1)
        first = first + lvl_pos[:, :m.first_l]
        f_hat = cond.new_zeros(B, m.Cvae, m.patch_nums[-1], m.patch_nums[-1])
        for _ in range(B):  # upstream's MaskGIT order: B shuffles of numpy's global generator
            np.random.shuffle(np.array(list(range(int(m.last_level_pns)))))
        sample, gumbel = self.helpers()
        st = _HARTCall(B=B, g_seed=a.get("g_seed"), rng=rng, cfg=float(cfg), top_p=float(a.get("top_p", 0.0)),
                       more_smooth=bool(a.get("more_smooth", False)), final_stage=a.get("final_stage", 0),
                       cond=cond, cond_gss=m.shared_ada_lin(cond), ctx_pos=ctx_pos, ctx_mask=ctx_mask, lvl_pos=lvl_pos, f_hat=f_hat, next_x=first,
                       sample=sample, gumbel=gumbel)
        for b in m.blocks:
            b.attn.kv_caching(True)
        return st

    def _offset(self, si: int) -> int:
        """Where scale ``si``'s rows start in ``lvl_pos`` (the text, then each image scale)."""
        m = self.model
        return 0 if si == 0 else int(m.context_token) + sum(pn * pn for pn in m.patch_nums[1:si])

    def run_block(self, st: _HARTCall, block: nn.Module, x: torch.Tensor, si: int,
                  positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        cond = st.cond_gss
        if positions is None:  # upstream's block as it is (the last scale: all of MaskGIT's tokens, in order)
            return block(x=x, cond_BD=cond, attn_bias=None, si=si, context_position_ids=st.ctx_pos,
                         context_mask=st.ctx_mask)
        condition = _pooling(cond, st.ctx_mask, block.sep_aln_pooling_mode).unsqueeze(1)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = block.ada_lin(condition).view(-1, 1, 6, block.C).unbind(2)
        h = self._attention(st, block.attn, block.ln_wo_grad(x).mul(scale1.add(1)).add_(shift1), si, positions)
        x = x + block.drop_path(h.mul_(gamma1))
        return x + block.drop_path(block.ffn(block.ln_wo_grad(x).mul(scale2.add(1)).add_(shift2)).mul(gamma2))

    def _rope(self, st: _HARTCall, attn: nn.Module, v: torch.Tensor, si: int, positions: torch.Tensor):
        """RoPE tables of the representatives ``positions`` ``(rows, r)`` of scale ``si``: their
        coordinates on the grid, rescaled to the last grid, offset by the row's last context
        position id, as upstream's 2-D RoPE (once per unit, not per block)."""
        if st.rope is None or st.rope[0] is not positions:
            pns = self.model.patch_nums
            pn, largest = pns[si], pns[-1]
            coords = torch.stack((torch.div(positions, pn, rounding_mode="floor"), positions % pn), dim=-1)
            coords = coords / pn * largest + st.ctx_pos[:, -1].unsqueeze(-1).unsqueeze(-1)
            cos, sin = attn.rotary_emb(v, coords)
            st.rope = (positions, cos, sin)
        return st.rope[1], st.rope[2]

    def _attention(self, st: _HARTCall, attn: nn.Module, x: torch.Tensor, si: int,
                   positions: torch.Tensor) -> torch.Tensor:
        """Upstream's attention of ``x`` (``(rows, r, C)``, representatives at ``positions``) with the
        KV cache, appending the new keys and values in the layout upstream's cache has."""
        B, L, C = x.shape
        qkv = F.linear(x, attn.qkv_proj.weight, torch.cat((attn.q_bias, attn.zero_k_bias, attn.v_bias)))
        q, k, v = qkv.view(B, L, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # BHLc
        if attn.attn_l2_norm:
            q = F.normalize(q, dim=-1).mul(attn.scale_mul_1H11.clamp_max(attn.max_scale_mul).exp())
            k = F.normalize(k, dim=-1)
        cos, sin = self._rope(st, attn, v, si, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        if attn.caching:
            if attn.cached_k is None:
                raise RuntimeError("HART low-rank scale without a KV cache: scale 0 (the text) must run first")
            flat = kv_token_dim(attn) == 1  # flash/xformers keep BLHc
            new_k, new_v = (k.transpose(1, 2), v.transpose(1, 2)) if flat else (k, v)
            attn.cached_k = torch.cat((attn.cached_k, new_k.to(attn.cached_k.dtype)), dim=1 if flat else 2)
            attn.cached_v = torch.cat((attn.cached_v, new_v.to(attn.cached_v.dtype)), dim=1 if flat else 2)
            k, v = (attn.cached_k.transpose(1, 2), attn.cached_v.transpose(1, 2)) if flat else (attn.cached_k, attn.cached_v)
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), scale=attn.scale)
        out = attn.proj(out.transpose(1, 2).reshape(B, L, C))
        return attn.proj_drop(out) if hasattr(attn, "proj_drop") else out

    def _ratio(self, si: int) -> float:
        K = len(self.model.patch_nums)
        return min(si, K - 2) / (K - 1)  # the last scale reuses the ratio of the one before, as upstream

    def _next_input(self, st: _HARTCall, si: int, next_map: torch.Tensor) -> None:
        m = self.model
        x = m.word_embed(next_map.reshape(st.B, m.Cvae, -1).transpose(1, 2))
        lo = self._offset(si + 1)
        x = x + st.lvl_pos[:, lo:lo + m.patch_nums[si + 1] ** 2]
        st.next_x = x.repeat(2, 1, 1) if st.branch == "both" else x

    def predict(self, st: _HARTCall, si: int, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        K = len(m.patch_nums)
        ratio = self._ratio(si)
        logits_BlV = m.get_logits(x, st.cond)
        t = st.cfg * ratio
        if st.branch == "both":
            logits_BlV = (1 + t) * logits_BlV[:st.B] - t * logits_BlV[st.B:]
        if si == 0:
            logits_BlV = logits_BlV[:, -1:, :]  # the last context position predicts the 1x1 map (a slice: no index tensor)
        quant = m.vae_quant_proxy[0]
        idx_Bl, h = sample_codes(st, quant, logits_BlV, ratio, 600 if si < 7 else 300, st.top_p)  # the call's top_k unread
        pn = m.patch_nums[si]
        if si < K - 1:
            h_BChw = h.transpose_(1, 2).reshape(st.B, m.Cvae, pn, pn)
            st.f_hat, nxt = quant.get_next_autoregressive_input(si, K, st.f_hat, h_BChw, patch_nums=m.patch_nums)
            self._next_input(st, si, nxt)
            return idx_Bl
        if st.final_stage == 0:  # the diffusion head's continuous residual
            d = m.word_embed(quant.embedding(idx_Bl))
            both = st.branch == "both"
            z = m.decoder_norm(x + (torch.cat([d, d], dim=0) if both else d))
            rows, seq, _ = z.shape
            # one branch: the kept rows through the head's unguided path (guidance exactly 1.0)
            diff = m.diffloss.sample(z=z.reshape(rows * seq, -1), temperature=1.0, cfg=t if both else 1.0)
            diff = diff.reshape(rows, seq, -1)
            h = h + (diff.chunk(2, dim=0)[0] if both else diff)
        # upstream writes the codes into a default-dtype buffer first, then adds it to f_hat
        st.f_hat += h.to(torch.get_default_dtype()).transpose(1, 2).reshape(st.B, m.Cvae, pn, pn)
        return idx_Bl

    def _decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.model.vae_proxy[0].fhat_to_img(f_hat).add_(1).mul_(0.5)

    def finish(self, st: _HARTCall) -> torch.Tensor:
        return self._decode(st.f_hat)

    # -- the tools -----------------------------------------------------------------------------
    def condition_kwargs(self, conditions, encode=None) -> dict:
        if encode is None:
            raise ValueError("HART conditions are prompts: pass encode= (prompts -> label_B, context_position_ids and "
                             "context_mask of the B prompts, e.g. bundle.encode for the reference model)")
        return dict(B=len(conditions), **encode(list(conditions)))

    def decode_partial(self, st: _HARTCall) -> torch.Tensor:
        return self._decode(st.f_hat.clone())

    def branch_logits(self, st: _HARTCall, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = self.model.get_logits(x, st.cond)
        return logits[:st.B], logits[st.B:]
