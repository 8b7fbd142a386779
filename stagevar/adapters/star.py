"""STAR (Davinci-XLab/STAR-T2I, class ``VAR`` in ``models/var_drop.py``), duck-typed on its names.

Follows the loop of ``VAR.autoregressive_infer_cfg`` in github.com/Davinci-XLab/STAR-T2I at
commit 4ae4492 of 2025-03-11 (the published inference path, ``w_mask`` off or without the masked sampler): the
start token from the pooled text (``encoder_proj``), ``2B`` text rows (prompts, then empty
prompts) entering every block by cross-attention with a padding mask, the 2-D RoPE rows of each
scale (``freqs_cis``) plus the level embedding added to the input, CFG weight ramping with the
scale as in VAR, the model's own ``rng`` and sampling helpers, the VQVAE decode with CUDA autocast
off. Upstream's blocks add ``cross_attn(...)[0]`` -- the first row's cross-attention -- to every
row; the adapter calls the blocks as they are, so under CFG every row gets prompt 0's text and,
once one branch is kept, every kept row gets that branch's first row's (with ``branch="uncond"``,
the empty prompt's: the text is really dropped, as in the StageVAR authors' STAR code).

Low-rank units give each projected token the RoPE rotation of its representative position (a
per-row ``(rows, r, head_dim / 2)`` table, which upstream's ``apply_rotary_emb`` broadcasts).

Refuses: the masked sampler (``w_mask=True`` on a model built with ``enable_adaptive_norm``, the
``star-1024-sampler`` checkpoint); ``noise_sampling`` models (the start token drawn from the
global RNG); ``shared_aln`` models (per-position AdaLN, in no published checkpoint); models
without the level embedding (``absolute_lvl_emb=False``, which upstream's loop cannot run without
``shared_aln`` either); text that is not ``2B`` rows; call arguments it does not implement.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ._varloop import VARLoopAdapter
from .base import CallState, UnsupportedModelError, select_rows


@dataclass
class _STARCall(CallState):
    cfg: float
    top_k: Tuple[int, ...]           # per scale (sample_version="old" narrows the late scales)
    top_p: Tuple[float, ...]
    more_smooth: bool
    text: Optional[torch.Tensor]       # (rows, T, Ct) encoder_hidden_states of the rows kept
    text_mask: Optional[torch.Tensor]  # (rows, 1, 1, T) additive bias (0 / -inf), or a broadcast one
    lvl_pos: Optional[torch.Tensor]    # (1, L, C) what upstream adds to each scale's input, or None
    f_hat: torch.Tensor                # (B, Cvae, H, W) accumulated latent
    sample: Any = None                 # the sampling helpers of this call
    gumbel: Any = None
    rope: Optional[tuple] = field(default=None)  # (positions, freqs) of the current low-rank unit


def _text_mask(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Upstream's ``prepare_attn_mask``: a ``(N, T)`` 0/1 mask -> a ``(N, 1, 1, T)`` 0/-inf bias."""
    if mask is not None and mask.ndim == 2:
        mask = torch.where(mask == 1, 0, -torch.inf).unsqueeze(1).unsqueeze(1)
    return mask


class STARAdapter(VARLoopAdapter):
    family = "star"
    required = ("patch_nums", "blocks", "encoder_proj", "head_logits", "word_embed", "pos_start", "lvl_1L",
                "freqs_cis", "rotary_pos_emb", "absolute_lvl_emb", "vae_quant_proxy", "vae_proxy", "Cvae", "first_l",
                "get_logits", "autoregressive_infer_cfg")
    block_class = "AttnBlock"
    row_fields = ("text",)
    consumed = frozenset({"B", "label_B", "encoder_hidden_states", "encoder_attention_mask", "encoder_pool_feat",
                          "g_seed", "cfg", "top_k", "top_p", "more_smooth", "w_mask", "sample_version"})

    def __init__(self, model: nn.Module):
        super().__init__(model)
        why = None
        if getattr(model, "noise_sampling", False):
            why = ("it is built with noise_sampling=True: upstream draws its start token from the global RNG "
                   "(torch.randn), which no g_seed reproduces")
        elif getattr(model, "shared_aln", False):
            why = "it is built with shared_aln=True (a per-position AdaLN condition in no published checkpoint)"
        elif not model.absolute_lvl_emb:
            why = "it is built without the level embedding (lvl_emb=False), which upstream's loop cannot run either"
        elif model.rotary_pos_emb and model.freqs_cis is None:
            why = "rotary_pos_emb is set but the model has no freqs_cis table"
        if why is not None:
            raise UnsupportedModelError(f"stagevar does not support this STAR model: {why}")
        self._index: Dict[nn.Module, int] = {b: i for i, b in enumerate(model.blocks)}

    @property
    def default_preset(self) -> str:  # type: ignore[override]
        return "star-d16" if len(self.model.blocks) == 16 else "star-d30"

    def device(self) -> torch.device:
        return self.model.pos_start.device

    takes_prompts = True

    def condition_kwargs(self, conditions, encode=None) -> dict:
        if encode is None:
            raise ValueError("STAR conditions are prompts: pass encode= (prompts -> the call's text arguments for the "
                             "prompts then as many empty prompts, e.g. bundle.encode for the reference model)")
        return dict(B=len(conditions), label_B=None, **encode(list(conditions)))

    # ------------------------------------------------------------------------------------------
    def begin(self, args: tuple, kwargs: dict, cache_condition: bool = False) -> _STARCall:
        m = self.model
        a = self.bind_call(args, kwargs)
        B = int(a["B"])
        K = len(m.patch_nums)
        if a.get("w_mask") and getattr(m, "from_idx", math.inf) <= K - 1:
            raise ValueError(
                f"w_mask=True runs STAR's masked sampler (the star-1024-sampler checkpoint, enable_adaptive_norm) "
                f"from scale {m.from_idx} on: an extra network with masks drawn from the global RNG, which stagevar "
                f"does not implement. Call with w_mask=False (the plain sampler), or stagevar.restore(model) to "
                f"generate with the original method.")
        pool, text, mask = a.get("encoder_pool_feat"), a.get("encoder_hidden_states"), a.get("encoder_attention_mask")
        if pool is None:
            raise ValueError("STAR's autoregressive_infer_cfg needs encoder_pool_feat (the pooled text of the B prompts "
                             "then B empty prompts)")
        for name, t in (("encoder_pool_feat", pool), ("encoder_hidden_states", text)):
            if t is not None and t.shape[0] != 2 * B:
                raise ValueError(f"{name} has {t.shape[0]} rows but B={B}: STAR takes 2B text rows, the B prompts "
                                 f"then B empty prompts")
        cfg = a.get("cfg", 1.5)
        if not isinstance(cfg, numbers.Real):
            raise TypeError(f"cfg must be one number (STAR ramps it over the scales), got {type(cfg).__name__}")
        top_k, top_p = int(a.get("top_k", 0)), float(a.get("top_p", 0.0))
        if a.get("sample_version", "new") == "old":  # upstream's earlier sampler, narrower on the late scales
            top_ks = tuple(top_k if si < 9 else (300 if si < 12 else 100) for si in range(K))
            top_ps = (0.8,) * K
        else:
            top_ks, top_ps = (top_k,) * K, (top_p,) * K
        rng = self.seeded_generator(a.get("g_seed"))
        sos = m.encoder_proj(pool)
        lvl_pos = None if m.rotary_pos_emb else m.pos_1LC
        if m.absolute_lvl_emb:
            lvl_pos = m.lvl_embed(m.lvl_1L) if lvl_pos is None else lvl_pos + m.lvl_embed(m.lvl_1L)
        first = sos.unsqueeze(1).expand(2 * B, m.first_l, -1) + m.pos_start.expand(2 * B, m.first_l, -1)
        if lvl_pos is not None:
            first = first + lvl_pos[:, :m.first_l]
        f_hat = sos.new_zeros(B, m.Cvae, m.patch_nums[-1], m.patch_nums[-1])
        sample, gumbel = self.helpers()
        st = _STARCall(B=B, g_seed=a.get("g_seed"), rng=rng, cfg=cfg, top_k=top_ks, top_p=top_ps,
                       more_smooth=bool(a.get("more_smooth", False)), text=text, text_mask=_text_mask(mask),
                       lvl_pos=lvl_pos, next_x=first, f_hat=f_hat, sample=sample, gumbel=gumbel)
        for b in m.blocks:
            b.attn.kv_caching(True)
        return st

    # -- text bucketing (off by default: upstream's T5 encoder pads every prompt to 120 tokens) ------
    def text_lengths(self, args: tuple, kwargs: dict) -> Optional[Tuple[int, ...]]:
        """The text tensor's length ``T`` (every row padded to it, its mask marking the real
        tokens: reading those would need the device)."""
        try:
            text = self.bind_call(args, kwargs).get("encoder_hidden_states")
        except Exception:  # noqa: BLE001 -- the call itself says what is wrong with its arguments
            return None
        return (int(text.shape[1]),) if isinstance(text, torch.Tensor) and text.dim() == 3 else None

    def pad_text(self, st: _STARCall, length: int) -> None:
        """Zero text tokens after the call's ``T``, masked out of cross-attention (an additive
        ``-inf``, or ``False`` in a boolean mask; a mask is made where the call gave none)."""
        rows, T = st.text.shape[:2]
        if length < T:
            raise ValueError(f"text bucket {length} is shorter than the call's text ({T} tokens)")
        if length == T:
            return
        mask = st.text_mask
        if mask is None:
            mask = st.text.new_zeros((rows, 1, 1, T), dtype=torch.float32)
        if mask.shape[-1] != T:
            raise ValueError(f"encoder_attention_mask covers {mask.shape[-1]} text tokens, the text has {T}")
        fill = False if mask.dtype == torch.bool else -math.inf
        st.text_mask = torch.nn.functional.pad(mask, (0, length - T), value=fill)
        st.text = torch.nn.functional.pad(st.text, (0, 0, 0, length - T))

    def _freqs(self, st: _STARCall, si: int, positions: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Scale ``si``'s RoPE rows ``(M, c/2)``, or those of ``positions`` ``(rows, r)``: ``(rows, r, c/2)``."""
        freqs = self.model.freqs_cis
        if freqs is None:
            return None
        lo = self._offset(si)
        scale_freqs = freqs[lo:lo + self.model.patch_nums[si] ** 2]
        if positions is None:
            return scale_freqs
        if st.rope is None or st.rope[0] is not positions:  # once per unit, not per block
            st.rope = (positions, scale_freqs[positions])
        return st.rope[1]

    def run_block(self, st: _STARCall, block: nn.Module, x: torch.Tensor, si: int,
                  positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        # Absolute positions (pos_1LC, without RoPE) are already in x: `positions` only picks RoPE rows.
        return block(x=x, encoder_hidden_states=st.text, encoder_attention_mask=st.text_mask, cond_BD=None,
                     attn_bias=None, freqs_cis=self._freqs(st, si, positions), layer_id=self._index.get(block, 0))

    def keep_rows(self, st: _STARCall, branch: str) -> None:
        super().keep_rows(st, branch)  # the KV caches, next_x and the text
        if st.text_mask is not None and st.text_mask.shape[0] != 1:  # a (1, ...) bias broadcasts: keep it
            st.text_mask = select_rows(st.text_mask, st.B, branch)

    def _next_input(self, st: _STARCall, si: int, next_map: torch.Tensor) -> None:
        m = self.model
        if si == len(m.patch_nums) - 1:
            return
        x = m.word_embed(next_map.view(st.B, m.Cvae, -1).transpose(1, 2))
        if st.lvl_pos is not None:
            lo = self._offset(si + 1)
            x = x + st.lvl_pos[:, lo:lo + m.patch_nums[si + 1] ** 2]
        st.next_x = x.repeat(2, 1, 1) if st.branch == "both" else x

    def predict(self, st: _STARCall, si: int, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        ratio = si / (len(m.patch_nums) - 1)
        logits_BlV = m.get_logits(x)
        if st.branch == "both":
            t = st.cfg * ratio
            logits_BlV = (1 + t) * logits_BlV[:st.B] - t * logits_BlV[st.B:]
        # one branch: the kept rows' own logits (uncond: CFG weight 0, as in the paper)
        quant = m.vae_quant_proxy[0]
        if not st.more_smooth:
            idx_Bl = st.sample(logits_BlV, rng=st.rng, top_k=st.top_k[si], top_p=st.top_p[si], num_samples=1)
            if idx_Bl.dim() == 3:  # a VAR-style helper returns (B, l, 1); upstream STAR's returns (B, l)
                idx_Bl = idx_Bl[:, :, 0]
            h_BChw = quant.embedding(idx_Bl)
        else:
            gum_t = max(0.27 * (1 - ratio * 0.95), 0.005)
            soft_BlV = st.gumbel(logits_BlV.mul(1 + ratio), tau=gum_t, hard=False, dim=-1, rng=st.rng)
            idx_Bl = soft_BlV.argmax(dim=-1)  # reported only; the codes are the soft mixture, as upstream
            h_BChw = soft_BlV @ quant.embedding.weight.unsqueeze(0)
        self._add_codes(st, si, h_BChw)
        return idx_Bl

    def _decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", enabled=False):  # as upstream: the VQVAE decodes in fp32
            return self.model.vae_proxy[0].fhat_to_img(f_hat.float()).add_(1).mul_(0.5)

    def decode_partial(self, st: _STARCall) -> torch.Tensor:
        return self._decode(st.f_hat.clone())

    def branch_logits(self, st: _STARCall, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = self.model.get_logits(x)
        return logits[:st.B], logits[st.B:]

    def finish(self, st: _STARCall) -> torch.Tensor:
        return self._decode(st.f_hat)
