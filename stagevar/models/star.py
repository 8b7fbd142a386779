"""A reference STAR (scale-wise text-to-image autoregression), written to be read.

STAR (github.com/Davinci-XLab/STAR-T2I, class ``VAR`` in ``models/var_drop.py``, blocks in
``models/basic_var.py``) is VAR's next-scale loop with text instead of a class label:

- the start token is a projection of the pooled text feature (``encoder_proj``);
- every block (``AttnBlock``) runs self-attention with a KV cache, then cross-attention to the
  padded text (``encoder_hidden_states`` with a 0/1 ``encoder_attention_mask``), then an MLP;
  there is no AdaLN condition;
- positions are a 2-D RoPE whose coordinates are normalised to ``[0, rope_norm]`` at every scale
  (``freqs_cis``, one row per token of the pyramid), plus a learned level embedding added to the
  input (``lvl_embed``);
- the caller passes ``2B`` text rows -- the prompts, then as many empty prompts -- and the CFG
  weight ramps with the scale as in VAR.

This module mirrors upstream's attribute names and call conventions (``patch_nums``, ``blocks``
with ``.attn`` / ``.cross_attn`` / ``.ffn``, ``attn.kv_caching``, ``cached_k`` / ``cached_v``,
``freqs_cis``, ``lvl_embed``, ``lvl_1L``, ``pos_start``, ``word_embed``, ``encoder_proj``,
``head_logits``, ``logit_norm``, ``get_logits``, ``vae_quant_proxy``, ``vae_proxy``, ``rng``,
``autoregressive_infer_cfg``) so that stagevar's STAR adapter runs the same code paths here as on
the published model. It keeps upstream's quirks that change outputs: ``AttnBlock`` adds
``cross_attn(...)[0]`` -- the first row's cross-attention output -- to every row, and the sampler
returns ``(B, l)`` ids. It leaves out what inference with the published checkpoints never runs
(the masked sampler of ``star-1024-sampler``, ``shared_aln``, noise sampling, the unused class
embedding) and the no-op AdaLN arithmetic upstream keeps without a condition (``* (0 + 1) + 0``).
"""
from __future__ import annotations

import math
import zlib
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..sampling import gumbel_softmax_with_rng
from ..sampling import sample_with_top_k_top_p_ as _sample_BlN
from ._registry import ModelBuilder, ReferenceModel
from ._shapes import check_kv_layout, shape_config, vqvae_for
from .var import FFN  # the same MLP as VAR's (fc1, tanh-GELU, fc2)
from .vqvae import VQVAE

# STAR's schedules: 256^2 (d16 and d30), 512^2 and 1024^2 (d30), a 16x VQVAE latent.
PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
PATCH_NUMS_1024 = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)


def sample_with_top_k_top_p_(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0,
                             rng: Optional[torch.Generator] = None, num_samples: int = 1) -> torch.Tensor:
    """STAR's sampler convention: ``(B, l)`` ids for one sample (VAR's returns ``(B, l, 1)``)."""
    ids_BlN = _sample_BlN(logits_BlV, top_k=top_k, top_p=top_p, rng=rng, num_samples=num_samples)
    return ids_BlN[:, :, 0] if num_samples == 1 else ids_BlN


# -- 2-D RoPE, normalised over scales ----------------------------------------------------------------
def compute_axial_cis(dim: int, end_x: int, end_y: int, theta: float = 100.0, normalize: float = 32) -> torch.Tensor:
    """RoPE rotations ``(end_x * end_y, dim // 2)`` (complex) of an ``end_y x end_x`` token map.

    Half the pairs rotate with the column, half with the row; both coordinates are scaled to
    ``[0, normalize]`` whatever the map's size (``normalize=-1``: raw integer coordinates), so the
    same place in the image gets the same angle at every scale. A 1x1 map sits at 0.
    """
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    t_x, t_y = t % end_x, torch.div(t, end_x, rounding_mode="floor")
    if normalize != -1 and t.numel() > 1:
        t_x = t_x / t_x.max() * normalize
        t_y = t_y / t_y.max() * normalize
    angles_x, angles_y = torch.outer(t_x, freqs), torch.outer(t_y, freqs)
    return torch.cat([torch.polar(torch.ones_like(angles_x), angles_x),
                      torch.polar(torch.ones_like(angles_y), angles_y)], dim=-1)


def apply_rotary_emb(q_BHLc: torch.Tensor, k_BHLc: torch.Tensor, freqs_cis: torch.Tensor
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys in fp32 and return them in their dtype.

    ``freqs_cis``: ``(L, c // 2)`` shared by every row, or ``(B, L, c // 2)`` per row (the
    positions of each row's tokens differ, e.g. representative tokens).
    """
    f = freqs_cis.unsqueeze(1) if freqs_cis.dim() == 3 else freqs_cis  # (B, 1, L, c/2) broadcasts over heads
    out = []
    for t in (q_BHLc, k_BHLc):
        t_c = torch.view_as_complex(t.float().reshape(*t.shape[:-1], -1, 2))
        out.append(torch.view_as_real(t_c * f).flatten(3).type_as(t))
    return out[0], out[1]


def prepare_attn_mask(encoder_attention_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A ``(N, T)`` 0/1 text mask -> an additive ``(N, 1, 1, T)`` bias (0 kept, -inf padding);
    anything else is passed through, as upstream does."""
    if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:
        encoder_attention_mask = torch.where(encoder_attention_mask == 1, 0, -torch.inf)
        encoder_attention_mask = encoder_attention_mask.unsqueeze(1).unsqueeze(1)
    return encoder_attention_mask


# -- blocks ---------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Self-attention (RoPE, KV cache) or, with ``is_cross``, cross-attention to text (no cache).

    Self-attention caches ``(B, H, L, c)`` (SDPA's layout, token dim 2) or, with
    ``kv_layout="BLHc"``, ``(B, L, H, c)`` as upstream keeps it under flash-attn/xformers (token
    dim 1). Attention itself always runs through PyTorch SDPA here.
    """

    def __init__(self, block_idx: int, embed_dim: int, num_heads: int, is_cross: bool = False,
                 in_dim_cross: int = 1024, attn_l2_norm: bool = True, rotary_pos_emb: bool = True,
                 kv_layout: str = "BHLc"):
        super().__init__()
        assert embed_dim % num_heads == 0
        self.block_idx, self.num_heads, self.head_dim = block_idx, num_heads, embed_dim // num_heads
        self.is_cross, self.rotary_pos_emb, self.attn_l2_norm = is_cross, rotary_pos_emb, attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        if is_cross:
            self.mat_kv = nn.Linear(in_dim_cross, embed_dim * 2, bias=False)
            self.mat_q = nn.Linear(embed_dim, embed_dim, bias=False)
        else:
            self.mat_qkv = nn.Linear(embed_dim, embed_dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.using_flash = False
        self.using_xform = kv_layout == "BLHc" and not is_cross
        self.caching, self.cached_k, self.cached_v = False, None, None

    def kv_caching(self, enable: bool) -> None:
        self.caching, self.cached_k, self.cached_v = enable, None, None

    def forward(self, x: torch.Tensor, attn_bias: Optional[torch.Tensor] = None,
                encoder_hidden_states: Optional[torch.Tensor] = None, freqs_cis: Optional[torch.Tensor] = None,
                layer_id: int = 0) -> torch.Tensor:
        B, L, C = x.shape
        H, c = self.num_heads, self.head_dim
        if not self.is_cross:
            qkv = F.linear(x, self.mat_qkv.weight, torch.cat((self.q_bias, self.zero_k_bias, self.v_bias)))
            qkv = qkv.view(B, L, 3, H, c)
            if self.using_xform:
                q, k, v = qkv.unbind(dim=2)  # B L H c
                if self.rotary_pos_emb:
                    q, k = apply_rotary_emb(q.transpose(1, 2), k.transpose(1, 2), freqs_cis)
                    q, k = q.transpose(1, 2), k.transpose(1, 2)
                dim_cat = 1
            else:
                q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(dim=0)  # B H L c
                if self.rotary_pos_emb:
                    q, k = apply_rotary_emb(q, k, freqs_cis)
                dim_cat = 2
        else:
            q = F.linear(x, self.mat_q.weight, self.q_bias).view(B, L, H, c).permute(0, 2, 1, 3)
            kv = F.linear(encoder_hidden_states, self.mat_kv.weight, torch.cat((self.zero_k_bias, self.v_bias)))
            k, v = kv.view(B, -1, 2, H, c).permute(2, 0, 3, 1, 4).unbind(dim=0)
            dim_cat = 2
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            if self.using_xform:
                scale_mul = scale_mul.transpose(1, 2)
            q = F.normalize(q, dim=-1).mul(scale_mul).to(v.dtype)
            k = F.normalize(k, dim=-1).to(v.dtype)
        if self.caching:
            if self.cached_k is None:
                self.cached_k, self.cached_v = k, v
            else:
                k = self.cached_k = torch.cat((self.cached_k, k), dim=dim_cat)
                v = self.cached_v = torch.cat((self.cached_v, v), dim=dim_cat)
        if self.using_xform:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        oup = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)
        return self.proj(oup.transpose(1, 2).reshape(B, L, C))


class AttnBlock(nn.Module):
    """Self-attention, cross-attention to the text, MLP; pre-norm, no AdaLN condition."""

    def __init__(self, block_idx: int, embed_dim: int, num_heads: int, in_dim_cross: int, mlp_ratio: float = 4.0,
                 norm_eps: float = 1e-6, attn_l2_norm: bool = True, rotary_pos_emb: bool = True,
                 enable_cross: bool = True, cross_attn_ln: bool = True, kv_layout: str = "BHLc"):
        super().__init__()
        self.block_idx, self.C = block_idx, embed_dim
        self.attn = Attention(block_idx, embed_dim, num_heads, attn_l2_norm=attn_l2_norm,
                              rotary_pos_emb=rotary_pos_emb, kv_layout=kv_layout)
        self.enable_cross, self.cross_attn_ln = enable_cross, cross_attn_ln
        if enable_cross:
            self.cross_attn = Attention(block_idx, embed_dim, num_heads, is_cross=True, in_dim_cross=in_dim_cross,
                                        attn_l2_norm=attn_l2_norm)
        self.ffn = FFN(embed_dim, round(embed_dim * mlp_ratio))
        self.ln_wo_grad = nn.LayerNorm(embed_dim, eps=norm_eps, elementwise_affine=False)
        self.shared_aln = False
        self.fused_add_norm_fn = None
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor, cond_BD: Optional[torch.Tensor], attn_bias: Optional[torch.Tensor],
                encoder_hidden_states: Optional[torch.Tensor] = None,
                encoder_attention_mask: Optional[torch.Tensor] = None,
                freqs_cis: Optional[torch.Tensor] = None, layer_id: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_wo_grad(x), attn_bias=attn_bias, freqs_cis=freqs_cis, layer_id=layer_id)
        if encoder_hidden_states is not None and self.enable_cross:
            h = self.ln_wo_grad(x) if self.cross_attn_ln else x
            # Upstream's `[0]`: the first row's cross-attention output, broadcast to every row.
            x = self.cross_attn(h, encoder_hidden_states=encoder_hidden_states, attn_bias=encoder_attention_mask,
                                layer_id=layer_id)[0] + x
        return x + self.ffn(self.ln_wo_grad(x))


# -- the model ----------------------------------------------------------------------------------
class STAR(nn.Module):
    """Text-conditioned next-scale prediction over a :class:`VQVAE`'s token pyramid (upstream: ``VAR``)."""

    def __init__(self, vae_local: VQVAE, depth: int = 16, embed_dim: int = 1024, num_heads: int = 16,
                 mlp_ratio: float = 4.0, norm_eps: float = 1e-6, attn_l2_norm: bool = True, in_dim_cross: int = 1024,
                 patch_nums: Sequence[int] = PATCH_NUMS_256, rotary_pos_emb: bool = True,
                 absolute_lvl_emb: bool = True, rope_theta: float = 10000.0, rope_norm: float = 64.0,
                 enable_logit_norm: bool = True, enable_cross: bool = True, kv_layout: str = "BHLc"):
        super().__init__()
        assert embed_dim % num_heads == 0 and (embed_dim // num_heads) % 4 == 0, "2-D RoPE needs head_dim % 4 == 0"
        self.Cvae, self.V = vae_local.Cvae, vae_local.vocab_size
        self.depth, self.C, self.D, self.num_heads = depth, embed_dim, embed_dim, num_heads
        self.patch_nums: Tuple[int, ...] = tuple(patch_nums)
        self.L = sum(pn ** 2 for pn in self.patch_nums)
        self.first_l = self.patch_nums[0] ** 2
        self.begin_ends = []
        cur = 0
        for pn in self.patch_nums:
            self.begin_ends.append((cur, cur + pn ** 2))
            cur += pn ** 2
        self.num_stages_minus_1 = len(self.patch_nums) - 1
        self.rng = torch.Generator(device="cpu")
        self.rotary_pos_emb, self.absolute_lvl_emb = rotary_pos_emb, absolute_lvl_emb
        # what the published inference never turns on (the adapter refuses these where upstream has them)
        self.shared_aln, self.noise_sampling, self.enable_adaptive_norm = False, False, False
        self.from_idx = math.inf  # first scale of the masked sampler: none

        self.vae_proxy: Tuple[VQVAE] = (vae_local,)
        self.vae_quant_proxy = (vae_local.quantize,)
        self.word_embed = nn.Linear(self.Cvae, self.C)
        self.encoder_proj = nn.Linear(in_dim_cross, self.C)  # pooled text -> start token

        init_std = math.sqrt(1 / self.C / 3)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, self.C))
        nn.init.trunc_normal_(self.pos_start, mean=0, std=init_std)
        if rotary_pos_emb:
            self.rope_norm = rope_norm
            freqs = [compute_axial_cis(embed_dim // num_heads, pn, pn, theta=rope_theta, normalize=rope_norm)
                     for pn in self.patch_nums]
            # A buffer (upstream: a plain attribute on its device) so that .to(device) moves it.
            self.register_buffer("freqs_cis", torch.cat(freqs, dim=0), persistent=False)  # (L, head_dim // 2)
        else:
            self.pos_1LC = nn.Parameter(torch.empty(1, self.L, self.C))
            nn.init.trunc_normal_(self.pos_1LC, mean=0, std=init_std)
            self.freqs_cis = None
        lvl = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(self.patch_nums)])
        self.register_buffer("lvl_1L", lvl.view(1, self.L).contiguous(), persistent=False)
        if absolute_lvl_emb:
            self.lvl_embed = nn.Embedding(len(self.patch_nums), self.C)
            nn.init.trunc_normal_(self.lvl_embed.weight, mean=0, std=init_std)

        self.blocks = nn.ModuleList([
            AttnBlock(i, self.C, num_heads, in_dim_cross, mlp_ratio, norm_eps, attn_l2_norm, rotary_pos_emb,
                      enable_cross, kv_layout=kv_layout)
            for i in range(depth)
        ])
        self.enable_logit_norm = enable_logit_norm
        if enable_logit_norm:
            self.logit_norm = nn.LayerNorm(self.C, eps=norm_eps, elementwise_affine=False)
        self.head_logits = nn.Linear(self.C, self.V)

    def init_weights(self, init_head: float = 0.02) -> "STAR":
        """Random weights for timing and tests: every linear layer std ``1/sqrt(fan_in)``, the
        residual projections divided by ``sqrt(2 * depth)`` (as upstream), the head scaled to std
        ``init_head``."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                std = m.in_features ** -0.5
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for b in self.blocks:
            b.attn.proj.weight.data.div_(math.sqrt(2 * self.depth))
            b.ffn.fc2.weight.data.div_(math.sqrt(2 * self.depth))
        self.head_logits.weight.data.mul_(init_head / self.head_logits.weight.data.std().clamp_min(1e-12))
        return self

    def get_logits(self, h: torch.Tensor) -> torch.Tensor:
        """``(B, l, C)`` hidden states -> ``(B, l, V)`` fp32 logits."""
        feature = self.logit_norm(h.float()) if self.enable_logit_norm else h.float()
        return self.head_logits(feature).float()

    def _generator(self, g_seed: Optional[int]) -> Optional[torch.Generator]:
        if g_seed is None:
            return None
        device = self.pos_start.device
        if self.rng.device != device:
            self.rng = torch.Generator(device=device)
        self.rng.manual_seed(g_seed)
        return self.rng

    @torch.no_grad()
    def autoregressive_infer_cfg(self, B: int, label_B=None, encoder_hidden_states: Optional[torch.Tensor] = None,
                                 encoder_attention_mask: Optional[torch.Tensor] = None,
                                 encoder_pool_feat: Optional[torch.Tensor] = None, g_seed: Optional[int] = None,
                                 cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0, more_smooth: bool = False,
                                 w_mask: bool = False, sample_version: str = "new") -> torch.Tensor:
        """Generate ``B`` images ``(B, 3, H, W)`` in [0, 1] with classifier-free guidance.

        The text arguments hold ``2B`` rows: the ``B`` prompts, then ``B`` empty prompts
        (``encoder_hidden_states`` ``(2B, T, Ct)``, ``encoder_attention_mask`` ``(2B, T)`` of 0/1,
        ``encoder_pool_feat`` ``(2B, Ct)``). ``label_B`` is unused (upstream keeps it from VAR). The
        guidance weight ramps with the scale: ``t = cfg * si / (K - 1)``. ``sample_version="old"``
        narrows top-k / top-p on the late scales as upstream's old sampler did; ``w_mask`` has no
        effect on this model (no masked sampler).
        """
        K = len(self.patch_nums)
        mask = prepare_attn_mask(encoder_attention_mask)
        rng = self._generator(g_seed)
        sos = self.encoder_proj(encoder_pool_feat)
        lvl_pos = 0 if self.rotary_pos_emb else self.pos_1LC
        if self.absolute_lvl_emb:
            lvl_pos = lvl_pos + self.lvl_embed(self.lvl_1L)
        adds_lvl_pos = (not self.rotary_pos_emb) or self.absolute_lvl_emb
        next_token_map = sos.unsqueeze(1).expand(2 * B, self.first_l, -1) + self.pos_start.expand(2 * B, self.first_l, -1)
        if adds_lvl_pos:
            next_token_map = next_token_map + lvl_pos[:, :self.first_l]
        cur_L = 0
        f_hat = sos.new_zeros(B, self.Cvae, self.patch_nums[-1], self.patch_nums[-1])
        for b in self.blocks:
            b.attn.kv_caching(True)
        try:
            for si, pn in enumerate(self.patch_nums):
                ratio = si / self.num_stages_minus_1
                t = cfg * ratio
                cur_L += pn * pn
                freqs_cis_cur = self.freqs_cis[cur_L - pn * pn:cur_L] if self.freqs_cis is not None else None
                x = next_token_map
                for i, b in enumerate(self.blocks):
                    x = b(x=x, encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=mask, cond_BD=None,
                          attn_bias=None, freqs_cis=freqs_cis_cur, layer_id=i)
                logits_BlV = self.get_logits(x)
                logits_BlV = (1 + t) * logits_BlV[:B] - t * logits_BlV[B:]
                if not more_smooth:
                    if sample_version == "old":  # upstream's earlier sampler: narrower on the late scales
                        top_k = top_k if si < 9 else (300 if si < 12 else 100)
                        top_p = 0.8
                    idx_Bl = sample_with_top_k_top_p_(logits_BlV, rng=rng, top_k=top_k, top_p=top_p, num_samples=1)
                    h_BChw = self.vae_quant_proxy[0].embedding(idx_Bl)
                else:
                    gum_t = max(0.27 * (1 - ratio * 0.95), 0.005)
                    h_BChw = gumbel_softmax_with_rng(logits_BlV.mul(1 + ratio), tau=gum_t, hard=False, dim=-1, rng=rng) \
                        @ self.vae_quant_proxy[0].embedding.weight.unsqueeze(0)
                h_BChw = h_BChw.transpose_(1, 2).reshape(B, self.Cvae, pn, pn)
                f_hat, next_token_map = self.vae_quant_proxy[0].get_next_autoregressive_input(si, K, f_hat, h_BChw)
                if si != self.num_stages_minus_1:
                    next_token_map = self.word_embed(next_token_map.view(B, self.Cvae, -1).transpose(1, 2))
                    if adds_lvl_pos:
                        next_token_map = next_token_map + lvl_pos[:, cur_L:cur_L + self.patch_nums[si + 1] ** 2]
                    next_token_map = next_token_map.repeat(2, 1, 1)
        finally:
            for b in self.blocks:
                b.attn.kv_caching(False)
        with torch.autocast("cuda", enabled=False):
            return self.vae_proxy[0].fhat_to_img(f_hat.float()).add_(1).mul_(0.5)


# -- a deterministic text encoder ---------------------------------------------------------------------
class TextEncoder:
    """A small deterministic stand-in for STAR's CLIP text encoder.

    Words -> hashed ids -> seeded embeddings plus sinusoidal positions, between a start and an end
    token (so the empty prompt has two valid tokens), padded to ``max_length`` with a 0/1 mask;
    the pooled feature is the end token's embedding, as CLIP pools.
    """

    def __init__(self, dim: int, max_length: int = 77, vocab: int = 4096, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(vocab + 2, dim, generator=g)  # + start, end
        self.pool_proj = torch.randn(dim, dim, generator=g) / dim ** 0.5
        self.dim, self.max_length, self.vocab = dim, max_length, vocab

    def extract_text_features(self, prompts: Sequence[str], device=None
                              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(hidden (N, T, dim), mask (N, T) int64 of 0/1, pooled (N, dim))`` for ``N`` prompts."""
        N, T = len(prompts), self.max_length
        hidden = torch.zeros(N, T, self.dim)
        mask = torch.zeros(N, T, dtype=torch.long)
        pooled = torch.zeros(N, self.dim)
        freq = torch.exp(-math.log(1e4) * torch.arange(0, self.dim, 2, dtype=torch.float32) / self.dim)
        for n, p in enumerate(prompts):
            ids = [self.vocab] + [zlib.crc32(w.encode()) % self.vocab for w in p.lower().split()][:T - 2] + [self.vocab + 1]
            pos = torch.arange(len(ids), dtype=torch.float32)[:, None]
            pe = torch.zeros(len(ids), self.dim)
            pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
            feats = self.table[torch.tensor(ids)] + 0.1 * pe
            hidden[n, :len(ids)] = feats
            mask[n, :len(ids)] = 1
            pooled[n] = feats[-1] @ self.pool_proj
        if device is not None:
            hidden, mask, pooled = hidden.to(device), mask.to(device), pooled.to(device)
        return hidden, mask, pooled


class STARBundle:
    """A reference STAR with its VQVAE and text encoder, called as upstream's scripts call them.

    ``bundle.model.autoregressive_infer_cfg(B=len(prompts), label_B=None, **bundle.encode(prompts),
    g_seed=0, cfg=4.0, top_k=600, top_p=0.8)``
    """

    def __init__(self, model: STAR, text: TextEncoder):
        self.model, self.text = model, text
        self.vae = model.vae_proxy[0]

    def encode(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """The text arguments of a call for ``prompts``: ``2B`` rows, the prompts then ``B`` empty prompts."""
        if isinstance(prompts, str):
            prompts = [prompts]
        hidden, mask, pooled = self.text.extract_text_features(list(prompts) + [""] * len(prompts),
                                                               device=self.model.pos_start.device)
        return dict(encoder_hidden_states=hidden, encoder_attention_mask=mask, encoder_pool_feat=pooled)

    def generate(self, prompts: Sequence[str], cfg: float = 4.0, g_seed: Optional[int] = 0, top_k: int = 0,
                 top_p: float = 0.0, **kwargs) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [0, 1]."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return self.model.autoregressive_infer_cfg(B=len(prompts), label_B=None, **self.encode(prompts), g_seed=g_seed,
                                                   cfg=cfg, top_k=top_k, top_p=top_p, **kwargs)


# STAR ties width and heads to depth (C = 64 * depth, heads = depth). "d30-cpu" keeps d30's width on
# the 1024^2 schedule (14 scales) with 6 blocks, for timing on a CPU; "tiny"/"small" are for tests.
STAR_SHAPES: Dict[str, dict] = {
    "tiny": dict(depth=2, embed_dim=64, num_heads=4, patch_nums=(1, 2, 3, 4), vocab_size=64, z_channels=8, ch=16,
                 num_down=2, in_dim_cross=32, text_maxlen=8),
    "small": dict(depth=4, embed_dim=128, num_heads=4, patch_nums=(1, 2, 3, 4, 5, 6, 8), vocab_size=256,
                  z_channels=16, ch=32, num_down=3, in_dim_cross=64, text_maxlen=16),
    "d16": dict(depth=16, embed_dim=1024, num_heads=16, patch_nums=PATCH_NUMS_256),
    "d30": dict(depth=30, embed_dim=1920, num_heads=30, patch_nums=PATCH_NUMS_1024),
    "d30-cpu": dict(depth=6, embed_dim=1920, num_heads=30, patch_nums=PATCH_NUMS_1024),
}
_STAR_DEFAULTS = dict(vocab_size=4096, z_channels=32, ch=64, num_down=4, in_dim_cross=1024, text_maxlen=77,
                      mlp_ratio=4.0, attn_l2_norm=True, rotary_pos_emb=True, rope_theta=10000.0, rope_norm=64.0,
                      enable_logit_norm=True, kv_layout="BHLc", seed=0)


def reference_star(shape: str = "tiny", device: Optional[torch.device] = None, **overrides) -> STARBundle:
    """Build a reference STAR bundle (random weights, eval mode): ``.model``, ``.vae``, ``.encode``.

    Args:
        shape: one of :data:`STAR_SHAPES`.
        device: where to put it.
        **overrides: any shape field (``depth``, ``embed_dim``, ``num_heads``, ``patch_nums``,
            ``vocab_size``, ``z_channels``, ``ch``, ``num_down``, ``in_dim_cross``, ``text_maxlen``,
            ``mlp_ratio``, ``attn_l2_norm``, ``rotary_pos_emb`` (False: absolute positions
            ``pos_1LC``), ``rope_theta``, ``rope_norm``, ``enable_logit_norm``, ``kv_layout``
            ``"BHLc"``/``"BLHc"``) and ``seed``.
    """
    cfg = shape_config(STAR_SHAPES, _STAR_DEFAULTS, shape, overrides, "STAR")
    check_kv_layout(cfg["kv_layout"])
    patch_nums = tuple(cfg["patch_nums"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        vae = vqvae_for(cfg)
        model = STAR(vae, depth=cfg["depth"], embed_dim=cfg["embed_dim"], num_heads=cfg["num_heads"],
                     mlp_ratio=cfg["mlp_ratio"], attn_l2_norm=cfg["attn_l2_norm"], in_dim_cross=cfg["in_dim_cross"],
                     patch_nums=patch_nums, rotary_pos_emb=cfg["rotary_pos_emb"], rope_theta=cfg["rope_theta"],
                     rope_norm=cfg["rope_norm"], enable_logit_norm=cfg["enable_logit_norm"], kv_layout=cfg["kv_layout"])
        model.init_weights()
    model.eval()
    vae.eval()
    if device is not None:
        model.to(device)
        vae.to(device)
    return STARBundle(model, TextEncoder(cfg["in_dim_cross"], max_length=cfg["text_maxlen"], seed=cfg["seed"]))


def _build_star(shape, device, aspect, cfg) -> ReferenceModel:
    bundle = reference_star(shape, device=device)
    K = len(bundle.model.patch_nums)
    return ReferenceModel(f"reference STAR '{shape}' ({K} scales, random weights)", bundle.model, dict(cfg=cfg),
                          bundle.encode)


BUILDERS = {"star": ModelBuilder("star", "a reference STAR (text-to-image) with random weights", tuple(STAR_SHAPES), (),
                                 _build_star, tool_shapes=dict(demo="small", bench="tiny", calibrate="small",
                                                               generate="small"))}


__all__ = ["STAR", "AttnBlock", "Attention", "STARBundle", "TextEncoder", "reference_star", "STAR_SHAPES",
           "PATCH_NUMS_256", "PATCH_NUMS_512", "PATCH_NUMS_1024", "compute_axial_cis", "apply_rotary_emb",
           "prepare_attn_mask", "sample_with_top_k_top_p_"]
