"""A reference HART (mit-han-lab/hart's ``HARTForT2I``), written from scratch with upstream's attribute
names and call conventions, for tests and CPU timing (random weights).

What it keeps of upstream's inference path (``autoregressive_infer_cfg`` at commit e28a41f), quirks
included, so that stagevar's adapter runs the same code paths on it as on the published class:

- **the text is scale 0**: ``label_B`` holds ``B`` rows of ``context_token`` text features; the
  model appends ``B`` zero rows (the unconditional branch: the context embedding's bias after
  the norm), whose ``context_mask`` keeps only position 0 and whose ``context_position_ids`` are 0.
  Scale 0 runs the ``T`` context tokens through the blocks and samples the 1x1 map from the logits
  of the **last** context position;
- every block pools the un-pooled condition itself (``sep_aln_pooling_mode``: ``"max"`` ignores
  the mask, ``"avg"`` is the masked mean); the head's AdaLN max-pools it over all positions;
- context tokens carry 1-D RoPE at their position ids; image tokens a 2-D RoPE whose coordinates
  are rescaled to the last grid and offset by the row's last context position id, laid out as
  upstream does (``[x, x, y, y]`` quarter blocks, rotated with ``rotate_half`` over the whole head);
  positions are cached with :func:`functools.cache` keyed on the MaskGIT index tensor, as upstream;
- guidance ``t = cfg * si / (K - 1)``, the last scale reusing the stale ratio ``(K - 2) / (K - 1)``;
  ``top_k`` is ignored (600 before scale 7, 300 from there on);
- the last scale is MaskGIT (``num_maskgit_iters``, order from numpy's global generator) plus a
  diffusion head's continuous residual, sampled with the global torch generator (``cfg == 1.0``
  exactly: no guidance), added to ``f_hat`` without the quantizer's residual convolution.

Not kept: training, ``gpt2`` attention, cross-attention, the timestep level embedding,
``shared_aln``/``disable_aln`` variants (no published HART checkpoint uses them), flash-attn and the
fused CUDA kernels (pure torch here).
"""
from __future__ import annotations

import functools
import math
import zlib
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..sampling import gumbel_softmax_with_rng, sample_with_top_k_top_p_
from ._registry import ModelBuilder, ReferenceModel
from ._shapes import shape_config
from .vqvae import VQVAE, VectorQuantizer2

#: HART-0.7B's 1024^2 schedule: 14 scales, the last (64 x 64) MaskGIT + diffusion.
PATCH_NUMS_1024 = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)


class LlamaRMSNormFused(nn.Module):
    """RMS norm ``x / sqrt(mean(x^2) + eps) * weight`` (upstream's fused kernel, in pure torch)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, scale: float = 1.0, **kwargs):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size) * scale)
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (h * self.weight.float()).to(x.dtype)


@functools.cache
def get_position_ids(batch_size: int, patch_nums: Tuple[int, ...], device: torch.device, si: int = -1,
                     m_maskgit=None) -> torch.Tensor:
    """``(batch, L, 2)`` float coordinates of scale ``si``'s tokens (every scale's with -1), row-major
    over the grid, rescaled to the last grid; ``m_maskgit`` picks tokens. Cached on the arguments (a
    tensor argument by identity), as upstream."""
    largest = patch_nums[-1]
    pns = patch_nums if si == -1 else patch_nums[si:si + 1]
    parts = []
    for pn in pns:
        r = torch.arange(pn, device=device)
        grid = torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1)
        parts.append((grid / pn * largest).reshape(-1, 2))
    pos = torch.cat(parts, 0).unsqueeze(0).repeat(batch_size, 1, 1)
    if m_maskgit is None:
        return pos
    picked = pos[m_maskgit]
    return picked.reshape(batch_size, -1, picked.shape[-1])


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim: int = 2):
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def context_pooling(context_tokens: torch.Tensor, context_mask: Optional[torch.Tensor] = None,
                    mode: str = "avg") -> torch.Tensor:
    """``(B, T, D)`` -> ``(B, D)``: the masked mean (``avg``) or the max over all positions (``max``)."""
    if context_tokens.dim() == 2:
        return context_tokens
    if mode == "avg":
        m = context_mask.unsqueeze(-1).to(context_tokens.dtype)
        return (context_tokens * m / m.sum(1).clamp_(1).unsqueeze(1)).sum(1)
    if mode == "max":
        return context_tokens.max(1, keepdim=False).values
    raise ValueError(f"sep_aln_pooling_mode must be 'avg' or 'max', got {mode!r}")


class _RotaryTables(nn.Module):
    """RoPE tables ``(B, L, head_dim)`` (cos, sin), in float32 whatever the autocast, cast to ``x``'s dtype."""

    step = 2  # frequencies: one per `step` channels

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / base ** (torch.arange(0, dim, self.step).float() / dim),
                             persistent=False)

    @staticmethod
    def _emb(freqs: torch.Tensor) -> torch.Tensor:
        return torch.cat((freqs, freqs), dim=-1)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        with torch.autocast(device_type=x.device.type if x.device.type != "mps" else "cpu", enabled=False):
            emb = self._emb(position_ids.float()[..., None] * self.inv_freq.float())
            return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


class LlamaRotaryEmbedding1D(_RotaryTables):
    """1-D RoPE tables for position ids ``(B, L)``."""


class LlamaRotaryEmbedding(_RotaryTables):
    """2-D RoPE tables for coordinates ``(B, L, 2)``: per coordinate its angles twice (``head_dim / 4``
    frequencies each), x first, as upstream lays them out."""

    step = 4

    @staticmethod
    def _emb(freqs: torch.Tensor) -> torch.Tensor:  # (B, L, 2, dim/4) -> (B, L, dim): [x, x, y, y]
        return torch.cat((freqs, freqs), dim=-1).flatten(-2)


class LlamaAttention(nn.Module):
    """Self-attention with a KV cache (``BHLc``), text 1-D / image 2-D RoPE, no mask at inference."""

    def __init__(self, block_idx: int, patch_nums: Tuple[int, ...], embed_dim: int, num_heads: int,
                 context_token: int, attn_l2_norm: bool = False, rope_theta: float = 10000.0):
        super().__init__()
        self.block_idx, self.patch_nums, self.context_token = block_idx, tuple(patch_nums), context_token
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.rotary_emb = LlamaRotaryEmbedding(self.head_dim, base=rope_theta)
        self.context_rotary_emb = LlamaRotaryEmbedding1D(self.head_dim, base=rope_theta)
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(embed_dim)), nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Identity()  # upstream's, at its inference setting proj_drop=0
        self.using_flash = self.using_xform = False
        self.caching, self.cached_k, self.cached_v = False, None, None

    def kv_caching(self, enable: bool) -> None:
        self.caching, self.cached_k, self.cached_v = enable, None, None

    def forward(self, x, attn_bias, si=-1, context_position_ids=None, context_mask=None, m_maskgit=None):
        if si < 0:
            raise NotImplementedError("the reference HART runs inference only (si >= 0)")
        B, L, C = x.shape
        qkv = F.linear(x, self.qkv_proj.weight, torch.cat((self.q_bias, self.zero_k_bias, self.v_bias)))
        q, k, v = qkv.view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.attn_l2_norm:
            q = F.normalize(q, dim=-1).mul(self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp())
            k = F.normalize(k, dim=-1)
        if si == 0:  # the context tokens
            cos, sin = self.context_rotary_emb(v, context_position_ids)
        else:
            pos = get_position_ids(B, self.patch_nums[1:], x.device, si=si - 1, m_maskgit=m_maskgit)
            cos, sin = self.rotary_emb(v, pos + context_position_ids[:, -1].unsqueeze(-1).unsqueeze(-1))
        q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
        if self.caching:
            if self.cached_k is None:
                self.cached_k, self.cached_v = k, v
            else:
                k = self.cached_k = torch.cat((self.cached_k, k), dim=2)
                v = self.cached_v = torch.cat((self.cached_v, v), dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, L, C)))


class LlamaMLP(nn.Module):
    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.gate_proj = nn.Linear(in_features, hidden_features, bias=False)
        self.up_proj = nn.Linear(in_features, hidden_features, bias=False)
        self.down_proj = nn.Linear(hidden_features, in_features, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class AdaLNSelfAttn(nn.Module):
    """A HART block: the pooled condition's AdaLN around self-attention and a gated MLP."""

    def __init__(self, block_idx: int, embed_dim: int, cond_dim: int, num_heads: int, mlp_ratio: float,
                 patch_nums: Tuple[int, ...], context_token: int, sep_aln_pooling_mode: str = "max",
                 attn_l2_norm: bool = False, norm_eps: float = 1e-6):
        super().__init__()
        self.block_idx, self.C, self.D = block_idx, embed_dim, cond_dim
        self.disable_aln, self.shared_aln, self.use_cross_attn, self.cross_attn = False, False, False, None
        self.sep_aln_pooling_mode = sep_aln_pooling_mode
        self.drop_path = nn.Identity()
        self.attn = LlamaAttention(block_idx, patch_nums, embed_dim, num_heads, context_token, attn_l2_norm)
        self.ffn = LlamaMLP(embed_dim, int((embed_dim * mlp_ratio * 2) / 3 + 255) // 256 * 256)
        self.ln_wo_grad = LlamaRMSNormFused(embed_dim, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(cond_dim, 6 * embed_dim))
        self.fused_add_norm_fn = None

    def forward(self, x, cond_BD, attn_bias, si=-1, context_position_ids=None, context_mask=None, m_maskgit=None):
        condition = context_pooling(cond_BD, context_mask=context_mask, mode=self.sep_aln_pooling_mode).unsqueeze(1)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada_lin(condition).view(-1, 1, 6, self.C).unbind(2)
        a = self.attn(self.ln_wo_grad(x).mul(scale1.add(1)).add_(shift1), attn_bias=attn_bias, si=si,
                      context_position_ids=context_position_ids, context_mask=context_mask, m_maskgit=m_maskgit)
        x = x + self.drop_path(a.mul_(gamma1))
        return x + self.drop_path(self.ffn(self.ln_wo_grad(x).mul(scale2.add(1)).add_(shift2)).mul(gamma2))


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, D: int, norm_eps: float = 1e-6):
        super().__init__()
        self.C, self.D = C, D
        self.ln_wo_grad = LlamaRMSNormFused(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(D, 2 * C))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        if cond_BD.dim() == 3 and cond_BD.shape[1] > 1:  # max over every context position, the mask unread
            cond_BD = cond_BD.max(1, keepdim=True).values
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x_BLC).mul(scale.add(1)).add_(shift)


# -- the diffusion head -------------------------------------------------------------------------
def _timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x, y):
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(self.in_ln(x) * (1 + scale) + shift)


class SimpleMLPAdaLN(nn.Module):
    """The head's denoiser: ``(x_t, t, z)`` -> noise prediction and variance channels (``2 * Cvae``)."""

    def __init__(self, in_channels: int, model_channels: int, out_channels: int, z_channels: int, num_res_blocks: int):
        super().__init__()
        self.in_channels, self.model_channels = in_channels, model_channels
        self.time_embed = nn.Sequential(nn.Linear(256, model_channels), nn.SiLU(), nn.Linear(model_channels, model_channels))
        self.cond_embed = nn.Linear(z_channels, model_channels)
        self.input_proj = nn.Linear(in_channels, model_channels)
        self.res_blocks = nn.ModuleList(_ResBlock(model_channels) for _ in range(num_res_blocks))
        self.final_norm = nn.LayerNorm(model_channels, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 2 * model_channels))
        self.final_linear = nn.Linear(model_channels, out_channels)

    def forward(self, x, t, c):
        y = self.time_embed(_timestep_embedding(t, 256)) + self.cond_embed(c)
        h = self.input_proj(x)
        for blk in self.res_blocks:
            h = blk(h, y)
        shift, scale = self.final_modulation(y).chunk(2, dim=-1)
        return self.final_linear(self.final_norm(h) * (1 + scale) + shift)

    def forward_with_cfg(self, x, t, c, cfg_scale):
        """Guidance on the noise prediction: rows ``[:n/2]`` conditional, ``[n/2:]`` unconditional; both
        halves get the guided prediction."""
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half], dim=0), t, c)
        eps, rest = out[:, :self.in_channels], out[:, self.in_channels:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)


class _Sampler:
    """A cosine-schedule DDPM respaced to ``steps`` steps (posterior variance fixed), noise from the
    global generator of the tensors' device at every step."""

    def __init__(self, steps: int, train_steps: int = 1000):
        s = 0.008
        f = lambda t: math.cos((t / train_steps + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        alpha_bar = [f(t + 1) / f(0) for t in range(train_steps)]
        keep = sorted({round(i * (train_steps - 1) / max(steps - 1, 1)) for i in range(steps)})
        self.timesteps = keep
        ab = torch.tensor([alpha_bar[t] for t in keep], dtype=torch.float64)
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        self.alpha_bar, self.alpha_bar_prev = ab, ab_prev
        self.betas = 1 - ab / ab_prev
        self.var = self.betas * (1 - ab_prev) / (1 - ab)

    def p_sample_loop(self, fn, noise: torch.Tensor, model_kwargs: dict, temperature: float = 1.0) -> torch.Tensor:
        x = noise
        for i in reversed(range(len(self.timesteps))):
            t = torch.full((x.shape[0],), self.timesteps[i], device=x.device, dtype=torch.long)
            eps = fn(x, t, **model_kwargs)[:, :x.shape[1]].float()
            ab, abp, beta = (float(v[i]) for v in (self.alpha_bar, self.alpha_bar_prev, self.betas))
            x0 = ((x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1)
            mean = (math.sqrt(abp) * beta / (1 - ab)) * x0 + (math.sqrt(1 - beta) * (1 - abp) / (1 - ab)) * x
            z = torch.randn_like(x)
            x = mean + (math.sqrt(float(self.var[i])) * temperature * z if i > 0 else 0.0)
        return x


class DiffLoss(nn.Module):
    """The last scale's diffusion head: ``sample(z, temperature, cfg)`` -> ``(N, Cvae)`` residual codes."""

    def __init__(self, target_channels: int, z_channels: int, depth: int, width: int, num_sampling_steps: int):
        super().__init__()
        self.vae_scale = 0.6
        self.in_channels = target_channels
        self.net = SimpleMLPAdaLN(target_channels, width, 2 * target_channels, z_channels, depth)
        self.num_sampling_steps = num_sampling_steps
        self.gen_diffusion = _Sampler(num_sampling_steps)

    def sample(self, z: torch.Tensor, temperature: float = 1.0, cfg: float = 1.5) -> torch.Tensor:
        if not cfg == 1.0:  # guided: the noise drawn for the first half, shared by both
            noise = torch.randn(z.shape[0] // 2, self.in_channels).to(z.device)
            noise = torch.cat([noise, noise], dim=0)
            fn, kwargs = self.net.forward_with_cfg, dict(c=z, cfg_scale=cfg)
        else:
            noise = torch.randn(z.shape[0], self.in_channels).to(z.device)
            fn, kwargs = self.net.forward, dict(c=z)
        return self.gen_diffusion.p_sample_loop(fn, noise, kwargs, temperature=temperature) * self.vae_scale


# -- the tokenizer's quantizer and the model ----------------------------------------------------
class HARTHybridQuantizer(VectorQuantizer2):
    """VAR's multi-scale quantizer, except the last scale: its codes go into ``f_hat`` as they are."""

    def get_next_autoregressive_input(self, si: int, SN: int, f_hat: torch.Tensor, h_BChw: torch.Tensor,
                                      patch_nums: Optional[Sequence[int]] = None):
        pns = tuple(patch_nums) if patch_nums is not None else tuple(self.v_patch_nums)
        HW = pns[-1]
        if si != SN - 1:
            f_hat.add_(self._resi(si)(F.interpolate(h_BChw, size=(HW, HW), mode="bicubic")))
            return f_hat, F.interpolate(f_hat, size=(pns[si + 1], pns[si + 1]), mode="area")
        f_hat.add_(h_BChw)
        return f_hat, f_hat


def mask_by_order(mask_len: torch.Tensor, order: torch.Tensor, bsz: int, seq_len: int) -> torch.Tensor:
    masking = torch.zeros(bsz, seq_len, device=order.device)
    return torch.scatter(masking, -1, order[:, :int(mask_len)], torch.ones(bsz, seq_len, device=order.device)).bool()


class HARTForT2I(nn.Module):
    """Text-to-image HART: ``autoregressive_infer_cfg(B, label_B, g_seed, cfg, top_k, top_p,
    more_smooth, context_position_ids, context_mask, final_stage, num_maskgit_iters)`` -> images in [0, 1]."""

    def __init__(self, vae: VQVAE, depth: int = 2, embed_dim: int = 64, num_heads: int = 4, mlp_ratio: float = 4.0,
                 context_token: int = 8, context_dim: int = 32, patch_nums: Sequence[int] = (1, 2, 3, 4),
                 sep_aln_pooling_mode: str = "max", attn_l2_norm: bool = False, diff_width: int = 32,
                 diff_depth: int = 1, num_sampling_steps: int = 4, context_norm_scale: float = 1.0):
        super().__init__()
        self.Cvae, self.V = vae.Cvae, vae.vocab_size
        self.depth, self.C, self.D, self.num_heads = depth, embed_dim, embed_dim, num_heads
        self.patch_nums = tuple(patch_nums)
        self.L = sum(pn * pn for pn in self.patch_nums)
        self.context_token, self.context_dim = context_token, context_dim
        self.first_l = context_token
        self.num_stages_minus_1 = len(self.patch_nums) - 1
        self.last_level_pns = self.patch_nums[-1] ** 2
        self.attn_type = self.mlp_type = "llama"
        self.disable_aln = self.use_timestep_embed = self.use_cross_attn = False
        self.sep_aln_pooling_mode = sep_aln_pooling_mode
        self.diffusion_head_repeats = 1
        self.rng = torch.Generator()
        self.vae_proxy: Tuple[VQVAE] = (vae,)
        self.vae_quant_proxy: Tuple[HARTHybridQuantizer] = (vae.quantize,)
        self.word_embed = nn.Linear(self.Cvae, self.C)
        self.context_embed = nn.Linear(context_dim, self.D)
        self.context_norm = LlamaRMSNormFused(context_dim, scale=context_norm_scale)
        self.pos_start = None
        self.pos_1LC = None
        self.lvl_embed = nn.Embedding(len(self.patch_nums), self.C)
        self.shared_ada_lin = nn.Identity()
        self.blocks = nn.ModuleList(
            AdaLNSelfAttn(i, self.C, self.D, num_heads, mlp_ratio, self.patch_nums, context_token,
                          sep_aln_pooling_mode, attn_l2_norm) for i in range(depth))
        lvl = torch.cat([torch.zeros(context_token, dtype=torch.long)]
                        + [torch.full((pn * pn,), i + 1) for i, pn in enumerate(self.patch_nums[1:])])
        self.register_buffer("lvl_1L", lvl.view(1, -1).contiguous())
        self.head_nm = AdaLNBeforeHead(self.C, self.D)
        self.head = nn.Linear(self.C, self.V)
        self.decoder_norm = LlamaRMSNormFused(self.C)
        self.diffloss = DiffLoss(self.Cvae, self.C, diff_depth, diff_width, num_sampling_steps)

    def init_weights(self, init_head: float = 0.02) -> "HARTForT2I":
        """Random weights for timing and tests: linear layers std ``1/sqrt(fan_in)``, the residual
        projections divided by ``sqrt(2 * depth)``, the head scaled to std ``init_head``, the level
        embedding small."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                std = m.in_features ** -0.5
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.lvl_embed.weight, std=0.02)
        nn.init.normal_(self.context_embed.bias, std=0.02)
        for b in self.blocks:
            b.attn.proj.weight.data.div_(math.sqrt(2 * self.depth))
            b.ffn.down_proj.weight.data.div_(math.sqrt(2 * self.depth))
        self.head.weight.data.mul_(init_head / self.head.weight.data.std().clamp_min(1e-12))
        return self

    def get_logits(self, h_or_h_and_residual, cond_BD: Optional[torch.Tensor]) -> torch.Tensor:
        return self.head(self.head_nm(h_or_h_and_residual.float(), cond_BD).float()).float()

    def sample_orders(self, bsz: int) -> torch.Tensor:
        """One random order of the last scale's positions per row, from numpy's global generator."""
        orders = []
        for _ in range(bsz):
            order = np.array(list(range(self.last_level_pns)))
            np.random.shuffle(order)
            orders.append(order)
        return torch.Tensor(np.array(orders)).to(self.lvl_1L.device).long()

    def _codes(self, logits_BlV, ratio, rng, si, top_p, more_smooth):
        idx_Bl = sample_with_top_k_top_p_(logits_BlV, rng=rng, top_k=(600 if si < 7 else 300), top_p=top_p,
                                          num_samples=1)[:, :, 0]
        quant = self.vae_quant_proxy[0]
        if not more_smooth:
            return idx_Bl, quant.embedding(idx_Bl)
        gum_t = max(0.27 * (1 - ratio * 0.95), 0.005)
        soft = gumbel_softmax_with_rng(logits_BlV.mul(1 + ratio), tau=gum_t, hard=False, dim=-1, rng=rng)
        return idx_Bl, soft @ quant.embedding.weight.unsqueeze(0)

    @torch.no_grad()
    def autoregressive_infer_cfg(self, B: int, label_B: Optional[torch.Tensor], g_seed: Optional[int] = None, cfg=1.5,
                                 top_k=0, top_p=0.0, more_smooth=False, context_position_ids: torch.Tensor = None,
                                 context_mask: torch.Tensor = None, final_stage=0,
                                 num_maskgit_iters=1) -> torch.Tensor:
        if g_seed is None:
            rng = None
        else:
            if self.rng.device != self.lvl_1L.device:
                self.rng = torch.Generator(device=self.lvl_1L.device)
            self.rng.manual_seed(g_seed)
            rng = self.rng
        assert label_B is not None and label_B.shape[1] == self.context_token
        sos = cond_BD = self.context_embed(self.context_norm(torch.cat((label_B, torch.zeros_like(label_B)), dim=0)))
        context_position_ids = torch.cat((context_position_ids, torch.zeros_like(context_position_ids)), dim=0)
        b = context_mask.shape[0]
        context_mask = torch.cat((context_mask, torch.zeros_like(context_mask)))
        context_mask[b:, 0] = 1
        lvl_pos = self.lvl_embed(self.lvl_1L)
        next_token_map = sos.expand(2 * B, self.first_l, -1) + lvl_pos[:, :self.first_l]
        cur_L = 0
        f_hat = sos.new_zeros(B, self.Cvae, self.patch_nums[-1], self.patch_nums[-1])
        quant = self.vae_quant_proxy[0]
        for blk in self.blocks:
            blk.attn.kv_caching(True)
        ratio = 0.0
        for si, pn in enumerate(self.patch_nums[:-1]):
            ratio = si / self.num_stages_minus_1
            cur_L += pn * pn if si > 0 else self.context_token
            cond_gss = self.shared_ada_lin(cond_BD)
            x = next_token_map
            for blk in self.blocks:
                x = blk(x=x, cond_BD=cond_gss, attn_bias=None, si=si, context_position_ids=context_position_ids,
                        context_mask=context_mask)
            logits_BlV = self.get_logits(x, cond_BD)
            t = cfg * ratio
            logits_BlV = (1 + t) * logits_BlV[:B] - t * logits_BlV[B:]
            if si == 0:
                logits_BlV = logits_BlV[:, [-1], :]
            _, h = self._codes(logits_BlV, ratio, rng, si, top_p, more_smooth)
            h_BChw = h.transpose_(1, 2).reshape(B, self.Cvae, pn, pn)
            f_hat, nxt = quant.get_next_autoregressive_input(si, len(self.patch_nums), f_hat, h_BChw,
                                                             patch_nums=self.patch_nums)
            nxt = nxt.view(B, self.Cvae, -1).transpose(1, 2)
            next_token_map = self.word_embed(nxt) + lvl_pos[:, cur_L:cur_L + self.patch_nums[si + 1] ** 2]
            next_token_map = next_token_map.repeat(2, 1, 1)
        # the last scale: MaskGIT, then the diffusion head's residual
        si = len(self.patch_nums) - 1
        n = self.last_level_pns
        mask = torch.ones(B, n, device=f_hat.device)
        tokens = torch.zeros(B, n, self.Cvae, device=f_hat.device)
        orders = self.sample_orders(B)
        cond_gss = self.shared_ada_lin(cond_BD)
        for step in range(num_maskgit_iters):
            mask_ratio = np.cos(math.pi / 2.0 * (step + 1) / num_maskgit_iters)
            mask_len = torch.Tensor([np.floor(n * mask_ratio)]).to(f_hat.device)
            mask_len = torch.maximum(torch.Tensor([1]).to(f_hat.device),
                                     torch.minimum(torch.sum(mask, dim=-1, keepdims=True) - 1, mask_len))
            mask_next = mask_by_order(mask_len[0], orders, B, n)
            mask_to_pred = mask[:B].bool() if step >= num_maskgit_iters - 1 else torch.logical_xor(mask[:B].bool(),
                                                                                                   mask_next.bool())
            mask = mask_next
            cur_mask = torch.cat([mask_to_pred, mask_to_pred], dim=0).nonzero(as_tuple=True)
            x = next_token_map[cur_mask].reshape(2 * B, -1, self.C)
            for blk in self.blocks:
                x = blk(x=x, cond_BD=cond_gss, attn_bias=None, si=si, m_maskgit=cur_mask,
                        context_position_ids=context_position_ids, context_mask=context_mask)
            logits_BlV = self.get_logits(x, cond_BD)
            last_layer_cond = x
            t = cfg * ratio  # the previous scale's ratio, as upstream
            logits_BlV = (1 + t) * logits_BlV[:B] - t * logits_BlV[B:]
            idx_Bl, h = self._codes(logits_BlV, ratio, rng, si, top_p, more_smooth)
            if final_stage == 0:
                d = self.word_embed(quant.embedding(idx_Bl))
                z = self.decoder_norm(last_layer_cond + torch.cat([d, d], dim=0))
                rows, seq, _ = z.shape
                diff = self.diffloss.sample(z=z.reshape(rows * seq, -1), temperature=1.0, cfg=t)
                diff = diff.reshape(rows, seq, -1).chunk(2, dim=0)[0]
                tokens[mask_to_pred] = (h + diff).reshape(-1, self.Cvae)
            else:
                tokens[mask_to_pred] = h.reshape(-1, self.Cvae)
        f_hat += tokens.transpose(1, 2).reshape(B, self.Cvae, self.patch_nums[-1], self.patch_nums[-1])
        for blk in self.blocks:
            blk.attn.kv_caching(False)
        return self.vae_proxy[0].fhat_to_img(f_hat).add_(1).mul_(0.5)


class QwenStandIn:
    """A deterministic stand-in for HART's Qwen2 text encoder: words -> hashed ids -> seeded features,
    padded (right) to ``context_token`` with a pad token's features, as upstream's ``encode_prompts``
    returns them: ``(features (B, T, Ct), mask (B, T) bool, position ids cumsum(mask) - 1)``."""

    def __init__(self, context_dim: int, context_token: int, vocab: int = 4096, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(vocab + 1, context_dim, generator=g)  # the last row: the pad token
        self.vocab, self.context_token = vocab, context_token

    def encode(self, prompts: Sequence[str], device=None):
        T = self.context_token
        ids = torch.full((len(prompts), T), self.vocab, dtype=torch.long)
        for i, p in enumerate(prompts):
            words = (p.lower().split() or [""])[:T]
            ids[i, :len(words)] = torch.tensor([zlib.crc32(w.encode()) % self.vocab for w in words])
        mask = ids != self.vocab
        pos = torch.cumsum(mask, dim=1) - 1
        feats = self.table[ids] * (1 + 0.05 * torch.arange(T, dtype=torch.float32)[None, :, None])
        if device is not None:
            feats, mask, pos = feats.to(device), mask.to(device), pos.to(device)
        return feats, mask, pos


class HARTBundle:
    """A reference HART with its text stand-in, called as upstream's ``sample.py`` calls it.

    ``bundle.model.autoregressive_infer_cfg(B=len(prompts), **bundle.encode(prompts), g_seed=0, cfg=4.5)``
    """

    def __init__(self, model: HARTForT2I, text: QwenStandIn):
        self.model, self.text = model, text
        self.vae = model.vae_proxy[0]

    def encode(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """``label_B``, ``context_position_ids``, ``context_mask`` of ``B`` prompts (the model adds the
        unconditional rows itself)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        feats, mask, pos = self.text.encode(list(prompts), device=self.model.lvl_1L.device)
        return dict(label_B=feats, context_position_ids=pos, context_mask=mask)

    def generate(self, prompts: Sequence[str], cfg: float = 4.5, g_seed: Optional[int] = 0, **kwargs) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        return self.model.autoregressive_infer_cfg(B=len(prompts), **self.encode(prompts), g_seed=g_seed, cfg=cfg,
                                                   **kwargs)


# "0.7b" has HART-0.7B's width and depth (C = 1536, 24 heads, 24 blocks -- the authors' per-block
# table has 24 entries --, a 300 x 1536 Qwen2 context, Cvae 32, V 4096) on the 1024^2 schedule;
# "0.7b-cpu" keeps the width with 2 blocks, for timing on a CPU; "tiny"/"small" are for tests.
HART_SHAPES: Dict[str, dict] = {
    "tiny": dict(depth=2, embed_dim=64, num_heads=4, context_token=8, context_dim=32, patch_nums=(1, 2, 3, 4),
                 vocab_size=64, z_channels=8, ch=16, num_down=2, diff_width=32, diff_depth=1, num_sampling_steps=4),
    "small": dict(depth=4, embed_dim=128, num_heads=4, context_token=16, context_dim=64,
                  patch_nums=(1, 2, 3, 4, 5, 6, 8), vocab_size=256, z_channels=16, ch=32, num_down=3, diff_width=64,
                  diff_depth=2, num_sampling_steps=8),
    "0.7b": dict(depth=24, embed_dim=1536, num_heads=24, context_token=300, context_dim=1536,
                 patch_nums=PATCH_NUMS_1024, vocab_size=4096, z_channels=32, ch=32, num_down=4, diff_width=1024,
                 diff_depth=6, num_sampling_steps=8),
    "0.7b-cpu": dict(depth=2, embed_dim=1536, num_heads=24, context_token=300, context_dim=1536,
                     patch_nums=PATCH_NUMS_1024, vocab_size=4096, z_channels=32, ch=32, num_down=4, diff_width=1024,
                     diff_depth=6, num_sampling_steps=8),
}
_HART_DEFAULTS = dict(mlp_ratio=4.0, sep_aln_pooling_mode="max", attn_l2_norm=False, seed=0)


def reference_hart(shape: str = "tiny", device: Optional[torch.device] = None, **overrides) -> HARTBundle:
    """Build a reference HART bundle (random weights, eval mode): ``.model``, ``.vae``, ``.encode``.

    Args:
        shape: one of :data:`HART_SHAPES`.
        device: where to put it.
        **overrides: any shape field (``depth``, ``embed_dim``, ``num_heads``, ``context_token``,
            ``context_dim``, ``patch_nums``, ``vocab_size``, ``z_channels``, ``ch``, ``num_down``,
            ``diff_width``, ``diff_depth``, ``num_sampling_steps``, ``mlp_ratio``,
            ``sep_aln_pooling_mode`` ``"max"``/``"avg"``, ``attn_l2_norm``) and ``seed``.
    """
    cfg = shape_config(HART_SHAPES, _HART_DEFAULTS, shape, overrides, "HART")
    if cfg["sep_aln_pooling_mode"] not in ("max", "avg"):
        raise ValueError(f"sep_aln_pooling_mode must be 'max' or 'avg', got {cfg['sep_aln_pooling_mode']!r}")
    patch_nums = tuple(cfg["patch_nums"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        vae = VQVAE(vocab_size=cfg["vocab_size"], z_channels=cfg["z_channels"], ch=cfg["ch"], num_down=cfg["num_down"],
                    v_patch_nums=patch_nums)
        vae.quantize = HARTHybridQuantizer(cfg["vocab_size"], cfg["z_channels"], patch_nums)
        model = HARTForT2I(vae, depth=cfg["depth"], embed_dim=cfg["embed_dim"], num_heads=cfg["num_heads"],
                           mlp_ratio=cfg["mlp_ratio"], context_token=cfg["context_token"],
                           context_dim=cfg["context_dim"], patch_nums=patch_nums,
                           sep_aln_pooling_mode=cfg["sep_aln_pooling_mode"], attn_l2_norm=cfg["attn_l2_norm"],
                           diff_width=cfg["diff_width"], diff_depth=cfg["diff_depth"],
                           num_sampling_steps=cfg["num_sampling_steps"])
        model.init_weights()
    model.eval()
    vae.eval()
    if device is not None:
        model.to(device)
        vae.to(device)
    return HARTBundle(model, QwenStandIn(cfg["context_dim"], cfg["context_token"], seed=cfg["seed"]))


def _build_hart(shape, device, aspect, cfg) -> ReferenceModel:
    bundle = reference_hart(shape, device=device)
    K = len(bundle.model.patch_nums)
    return ReferenceModel(f"reference HART '{shape}' ({K} scales, random weights)", bundle.model, dict(cfg=cfg),
                          bundle.encode)


BUILDERS = {"hart": ModelBuilder("hart", "a reference HART (text-to-image, MaskGIT + diffusion last scale) with random "
                                 "weights", tuple(HART_SHAPES), (), _build_hart,
                                 tool_shapes=dict(demo="small", bench="tiny", calibrate="small", generate="small"))}

__all__ = ["HARTForT2I", "AdaLNSelfAttn", "LlamaAttention", "HARTBundle", "QwenStandIn", "reference_hart",
           "HART_SHAPES", "PATCH_NUMS_1024", "get_position_ids", "context_pooling", "apply_rotary_pos_emb",
           "sample_with_top_k_top_p_", "gumbel_softmax_with_rng"]
