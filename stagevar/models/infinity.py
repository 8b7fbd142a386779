"""A reference Infinity (text-to-image, bitwise next-scale prediction), written to be read.

It mirrors the attribute names and call conventions of FoundationVision Infinity's ``Infinity``
class -- ``block_chunks[i].module``, ``unregistered_blocks``, blocks with ``.sa`` / ``.ca`` /
``.ffn`` / ``ada_gss``, ``text_norm``, ``text_proj_for_sos``, ``text_proj_for_ca``,
``cfg_uncond``, ``shared_ada_lin``, ``lvl_embed``, ``pos_start``, ``word_embed``, ``head_nm``,
``head``, ``rope2d_freqs_grid[str(tuple(scale_schedule))]``, a packed text condition
``(kv_compact, lens, cu_seqlens_k, max_seqlen_k)``, a bitwise head decoded with
``vae.quantizer.lfq.indices_to_codes(..., label_type='bit_label')``, and the
``(ret, idx_Bl_list, img)`` return -- so stagevar's Infinity adapter runs the same code paths
here as on the published model. Unlike upstream it needs no flash-attn: attention over the
packed text runs through PyTorch SDPA with a padding mask.

It follows upstream's dtypes and memory layouts too, so that a run under ``torch.autocast``
exercises the adapter as the published model does: the AdaLN condition and the head run with
CUDA autocast off (CPU autocast stays on, as upstream leaves it), the condition is cast to fp32,
the norms before attention and MLP see fp32, RoPE is applied in fp32 and left in fp32, text
attention computes in bf16 (flash-attn has no fp32 kernel), codes are the channels-last view
upstream's quantizer returns and the code sum takes their layout.
"""
from __future__ import annotations

import math
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..sampling import sample_with_top_k_top_p_ as sample_with_top_k_top_p_also_inplace_modifying_logits_
from ._registry import ModelBuilder, ReferenceModel
from ._shapes import shape_config
from .var import AdaLNBeforeHead, SharedAdaLin

Schedule = List[Tuple[int, int, int]]
TextCond = Tuple[torch.Tensor, List[int], torch.Tensor, int]

# Side lengths of Infinity's 1M-pixel 1:1 schedule (13 scales; latent 64 -> 1024 px at 16x).
SIDES_1M = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)
# width:height -> h / w
ASPECTS = {"1:1": 1.0, "2:1": 0.5, "1:2": 2.0, "16:9": 9 / 16, "9:16": 16 / 9}


def infinity_schedule(aspect: str = "1:1", max_side: int = 64) -> Schedule:
    """A ``[(1, h, w), ...]`` schedule for an aspect ratio given as ``"width:height"``.

    The longer side follows :data:`SIDES_1M` up to ``max_side``; the shorter is scaled and
    rounded (at least 1). ``"2:1"`` is twice as wide as high, ``"1:2"`` twice as high as wide,
    ``"16:9"`` a 16:9 landscape.
    """
    if aspect not in ASPECTS:
        raise ValueError(f"unknown aspect {aspect!r}; choose one of {sorted(ASPECTS)}")
    h_div_w = ASPECTS[aspect]
    out = []
    for s in SIDES_1M:
        if s > max_side:
            break
        if h_div_w <= 1:
            out.append((1, max(1, round(s * h_div_w)), s))
        else:
            out.append((1, s, max(1, round(s / h_div_w))))
    return out


def precompute_rope2d_freqs_grid(head_dim: int, schedules: Sequence[Schedule], base: float = 10000.0
                                 ) -> Dict[str, torch.Tensor]:
    """2D RoPE tables, one per schedule, keyed ``str(tuple(schedule))``.

    Each token of scale ``(h, w)`` takes the (row, col) of its position mapped onto the last
    scale's grid; half the rotary pairs encode the row, half the column. Value shape
    ``(2, 1, 1, 1, L_total, head_dim // 2)`` as upstream lays it out: cos/sin, then axes that
    broadcast over the stacked (q, k) pair, the batch and the heads; tokens on dim -2 in
    schedule order.
    """
    assert head_dim % 4 == 0, "2D RoPE needs head_dim divisible by 4"
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim // 4, dtype=torch.float64) / (head_dim // 4)))
    grids = {}
    for sched in schedules:
        _, H, W = sched[-1]
        angles = []
        for _, h, w in sched:
            rows = torch.arange(h, dtype=torch.float64).mul(H / h).round()
            cols = torch.arange(w, dtype=torch.float64).mul(W / w).round()
            r = rows[:, None].expand(h, w).reshape(-1, 1) * inv_freq
            c = cols[None, :].expand(h, w).reshape(-1, 1) * inv_freq
            angles.append(torch.cat([r, c], dim=1))
        a = torch.cat(angles, dim=0)
        grids[str(tuple(tuple(int(v) for v in s) for s in sched))] = torch.stack([a.cos(), a.sin()]).float()[:, None, None, None]
    return grids


def apply_rotary_emb(q: torch.Tensor, k: torch.Tensor, scale_schedule: Schedule, rope2d_freqs_grid: Dict[str, torch.Tensor],
                     scale_ind: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``(B, H, L, hd)`` queries and keys by the RoPE of scale ``scale_ind``'s positions.

    The table rows used start at the number of tokens of the earlier scales. Both come back in
    the promoted dtype (fp32 with the fp32 tables), whatever ``q`` and ``k`` were: upstream does
    not cast them back, so its KV cache holds fp32 keys under autocast.
    """
    start = sum(h * w for _, h, w in scale_schedule[:scale_ind])
    L = q.shape[2]
    grid = rope2d_freqs_grid[str(tuple(tuple(int(v) for v in s) for s in scale_schedule))]
    qk = torch.stack((q, k))
    # as upstream: autocast off, fp32 tables, and the result left in the promoted dtype (fp32)
    with torch.autocast(q.device.type if q.device.type != "mps" else "cpu", enabled=False):
        f = grid[..., start:start + L, :].to(q.device)
        cos, sin = f[0], f[1]  # (1, B or 1, 1, L, hd/2), broadcast over the (q, k) stack
        qk2 = qk.reshape(*qk.shape[:-1], -1, 2)
        x0, x1 = qk2[..., 0], qk2[..., 1]
        out = torch.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], dim=-1).flatten(-2)
    return out[0], out[1]


def pad_packed(kv_compact: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Packed rows ``(N, ...)`` with offsets ``cu_seqlens_k`` ``(B+1,)`` -> padded ``(B, Lmax, ...)`` and a
    ``(B, Lmax)`` validity mask."""
    lens = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).long()
    ar = torch.arange(max_seqlen_k, device=kv_compact.device)
    mask = ar[None, :] < lens[:, None]
    idx = (cu_seqlens_k[:-1].long()[:, None] + ar[None, :]).clamp_max(max(kv_compact.shape[0] - 1, 0))
    return kv_compact[idx], mask


class FFN(nn.Module):
    def __init__(self, C: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(C, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, C)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Cosine self-attention with 2D RoPE and a KV cache (``(B, H, L, hd)``, token dim 2)."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.mat_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(embed_dim)), nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
        self.max_scale_mul = math.log(100)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.caching, self.cached_k, self.cached_v = False, None, None

    def kv_caching(self, enable: bool) -> None:
        self.caching, self.cached_k, self.cached_v = enable, None, None

    def forward(self, x, attn_bias_or_two_vector=None, attn_fn=None, scale_schedule=None, rope2d_freqs_grid=None,
                scale_ind=0):
        B, L, C = x.shape
        qkv = F.linear(x, self.mat_qkv.weight, torch.cat((self.q_bias, self.zero_k_bias, self.v_bias)))
        q, k, v = qkv.view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q = F.normalize(q, dim=-1, eps=1e-12).mul(self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()).contiguous()
        k = F.normalize(k, dim=-1, eps=1e-12).contiguous()
        v = v.contiguous()
        if rope2d_freqs_grid is not None:
            q, k = apply_rotary_emb(q, k, scale_schedule, rope2d_freqs_grid, scale_ind)
        if self.caching:
            if self.cached_k is None:
                self.cached_k, self.cached_v = k, v
            else:
                k = self.cached_k = torch.cat((self.cached_k, k), dim=2)
                v = self.cached_v = torch.cat((self.cached_v, v), dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias_or_two_vector, scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class CrossAttention(nn.Module):
    """Attention from image tokens to the packed text ``ca_kv = (kv_compact, cu_seqlens_k, max_seqlen_k)``."""

    def __init__(self, embed_dim: int, kv_dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.mat_q = nn.Linear(embed_dim, embed_dim)
        self.mat_kv = nn.Linear(kv_dim, 2 * embed_dim, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, q_BLC: torch.Tensor, ca_kv) -> torch.Tensor:
        kv_compact, cu_seqlens_k, max_seqlen_k = ca_kv
        B, L, C = q_BLC.shape
        if cu_seqlens_k.shape[0] != B + 1:
            raise ValueError(f"cross-attention: {B} query rows but cu_seqlens_k describes {cu_seqlens_k.shape[0] - 1} texts")
        kv = F.linear(kv_compact, self.mat_kv.weight, torch.cat((self.zero_k_bias, self.v_bias)))
        kv, mask = pad_packed(kv.view(-1, 2, self.num_heads, self.head_dim), cu_seqlens_k, max_seqlen_k)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # B H Lk hd
        q = self.mat_q(q_BLC).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)
        if q.dtype == torch.float32:  # upstream's flash-attn call has no fp32 kernel: bf16 in, fp32 out
            out = F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(),
                                                 attn_mask=mask[:, None, None, :]).float()
        else:
            out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class TextAttentivePool(nn.Module):
    """A learned query attends over each packed text: ``(kv_compact, cu, max) -> (B, D)``."""

    def __init__(self, Ct5: int, D: int, num_heads: int):
        super().__init__()
        self.ca = CrossAttention(D, Ct5, num_heads)
        self.query = nn.Parameter(torch.randn(1, 1, D) * D ** -0.5)

    def forward(self, ca_kv) -> torch.Tensor:
        B = ca_kv[1].shape[0] - 1
        return self.ca(self.query.expand(B, 1, -1), ca_kv)[:, 0]


class CrossAttnBlock(nn.Module):
    """Self-attention (RoPE, KV cache) + cross-attention to text + FFN, AdaLN-modulated by ``ada_gss + cond``."""

    def __init__(self, embed_dim: int, kv_dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 fused_norm: bool = True):
        super().__init__()
        self.C = embed_dim
        # Upstream's block forwards scale_ind to self-attention only on its fused-norm path; without
        # it (fused_norm_func None) the attention reads the RoPE table from row 0 at every scale.
        # fused_norm=False reproduces that path (the norms themselves are the same computation).
        self.fused_norm = fused_norm
        if not fused_norm:
            self.fused_norm_func = None
        self.sa = SelfAttention(embed_dim, num_heads)
        self.ca = CrossAttention(embed_dim, kv_dim, num_heads)
        self.ffn = FFN(embed_dim, max(256, round(embed_dim * mlp_ratio / 256) * 256))
        self.ln_wo_grad = nn.LayerNorm(embed_dim, eps=norm_eps, elementwise_affine=False)
        self.ca_norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.shared_aln = True
        self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, embed_dim) / embed_dim ** 0.5)
        self.ca_gamma = 1.0

    def forward(self, x, cond_BD, ca_kv, attn_bias_or_two_vector=None, attn_fn=None, scale_schedule=None,
                rope2d_freqs_grid=None, scale_ind=0):
        with torch.autocast("cuda", enabled=False):
            gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss + cond_BD).unbind(2)
        h = self.ln_wo_grad(x.float()).mul(scale1.add(1)).add_(shift1)
        x = x + self.sa(h, attn_bias_or_two_vector, attn_fn, scale_schedule, rope2d_freqs_grid,
                        scale_ind if self.fused_norm else 0).mul_(gamma1)
        x = x + self.ca(self.ca_norm(x), ca_kv).float().mul_(self.ca_gamma)
        x = x + self.ffn(self.ln_wo_grad(x.float()).mul(scale2.add(1)).add_(shift2)).mul(gamma2)
        return x


class MultipleLayers(nn.Module):
    """A block chunk: ``module`` holds consecutive blocks."""

    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        self.module = nn.ModuleList(blocks)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        x32 = x.float()  # computed in fp32, returned in the input's dtype (as upstream's FastRMSNorm)
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True).add_(self.eps)) * self.weight).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# the bitwise tokenizer side
class BSQ(nn.Module):
    """Binary spherical quantization: ``d`` bits per token -> codes ``±1/sqrt(d)``."""

    def __init__(self, codebook_dim: int):
        super().__init__()
        self.codebook_dim = codebook_dim

    def indices_to_codes(self, indices: torch.Tensor, label_type: str = "bit_label") -> torch.Tensor:
        """``(B, t, h, w, d)`` bits in {0, 1} -> fp32 codes ``(B, d, t, h, w)``, a channels-last view
        (upstream's quantizer returns that layout, and everything summed from it keeps it)."""
        if label_type != "bit_label":
            raise NotImplementedError("the reference BSQ decodes bit labels only")
        s = self.codebook_dim ** -0.5
        return (indices.float() * 2 * s - s).permute(0, 4, 1, 2, 3)


class MultiScaleBSQ(nn.Module):
    def __init__(self, codebook_dim: int):
        super().__init__()
        self.lfq = BSQ(codebook_dim)
        self.z_interplote_up = "trilinear"
        self.z_interplote_down = "area"


class BSQVAE(nn.Module):
    """Decoder from summed codes ``(B, d, h, w)`` to images in [-1, 1]."""

    def __init__(self, codebook_dim: int = 32, ch: int = 32, num_up: int = 4):
        super().__init__()
        self.codebook_dim = codebook_dim
        self.quantizer = MultiScaleBSQ(codebook_dim)
        layers: List[nn.Module] = [nn.Conv2d(codebook_dim, ch, 3, padding=1), nn.SiLU()]
        for _ in range(num_up):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU()]
        layers += [nn.Conv2d(ch, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*layers)
        self.upsample = 2 ** num_up

    def decode(self, z_BdHW: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.decoder(z_BdHW))


# ----------------------------------------------------------------------------------------------
class Infinity(nn.Module):
    """Text-conditional bitwise next-scale-prediction transformer."""

    def __init__(self, Ct5: int = 64, depth: int = 8, embed_dim: int = 256, num_heads: int = 4, mlp_ratio: float = 4.0,
                 codebook_dim: int = 32, num_block_chunks: int = 2, text_maxlen: int = 64,
                 schedules: Sequence[Schedule] = (), add_lvl_embeding_only_first_block: int = 1,
                 apply_spatial_patchify: int = 0, fused_norm: bool = True):
        super().__init__()
        assert depth % num_block_chunks == 0, "depth must be a multiple of num_block_chunks"
        self.C = self.D = embed_dim
        self.Ct5, self.depth, self.num_heads = Ct5, depth, num_heads
        # As upstream: with apply_spatial_patchify (Infinity-8B) a token is a 2x2 patch of the VAE's
        # d-bit latents, so the transformer reads and predicts 4d bits per token. The argument
        # codebook_dim is the VAE's d; the attribute, as upstream's, is the token's (d_vae).
        self.apply_spatial_patchify = int(apply_spatial_patchify)
        self.d_vae = codebook_dim * (4 if self.apply_spatial_patchify else 1)
        self.codebook_dim = self.d_vae
        self.V = 2 * self.d_vae  # two logits per bit
        self.use_bit_label = 1
        self.add_lvl_embeding_only_first_block = add_lvl_embeding_only_first_block
        self.rng = torch.Generator(device="cpu")

        self.text_norm = RMSNorm(Ct5)
        self.text_proj_for_sos = TextAttentivePool(Ct5, self.D, num_heads)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(Ct5, self.D), nn.GELU(approximate="tanh"), nn.Linear(self.D, self.D))
        self.cfg_uncond = nn.Parameter(torch.randn(text_maxlen, Ct5) * 0.5)
        self.pos_start = nn.Parameter(torch.randn(1, 1, self.C) * 0.02)
        self.lvl_embed = nn.Embedding(15, self.C)
        self.norm0_ve = nn.Identity()  # upstream's nm0=False
        self.word_embed = nn.Linear(self.d_vae, self.C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(inplace=False), SharedAdaLin(self.D, 6 * self.C))
        blocks = [CrossAttnBlock(self.C, self.D, num_heads, mlp_ratio, fused_norm=fused_norm) for _ in range(depth)]
        per = depth // num_block_chunks
        self.num_block_chunks = num_block_chunks
        self.block_chunks = nn.ModuleList([MultipleLayers(blocks[i * per:(i + 1) * per]) for i in range(num_block_chunks)])
        self.unregistered_blocks = blocks
        self.head_nm = AdaLNBeforeHead(self.C, self.D)
        self.head = nn.Linear(self.C, self.V)
        self.rope2d_freqs_grid = precompute_rope2d_freqs_grid(self.C // num_heads, list(schedules))

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        device = self.pos_start.device  # the RoPE tables follow the model's device, staying fp32
        self.rope2d_freqs_grid = {k: v.to(device) for k, v in self.rope2d_freqs_grid.items()}
        return out

    def init_weights(self, gate: float = 1.0, seed: int = 0, bias_std: float = 0.0) -> "Infinity":
        """Variance-preserving random weights with residual gates ~``gate`` (a random stand-in for a trained model).

        ``bias_std > 0`` gives the linear and attention biases random values, as a trained model
        has; some kernels add a bias in a different order depending on the input's memory layout,
        which zero biases hide.
        """
        g = torch.Generator().manual_seed(seed)

        def bias(t: torch.Tensor) -> None:
            t.data.copy_(torch.randn(t.shape, generator=g) * bias_std if bias_std > 0 else torch.zeros_like(t))

        for m in self.modules():
            if isinstance(m, nn.Linear):
                std = m.in_features ** -0.5
                m.weight.data.copy_(torch.randn(m.weight.shape, generator=g).clamp_(-2, 2) * std)
                if m.bias is not None:
                    bias(m.bias)
            elif isinstance(m, nn.Embedding):
                m.weight.data.copy_(torch.randn(m.weight.shape, generator=g) * 0.1)
            elif isinstance(m, (SelfAttention, CrossAttention)):
                bias(m.v_bias)
                if isinstance(m, SelfAttention):
                    bias(m.q_bias)
        for b in self.unregistered_blocks:
            b.sa.proj.weight.data.div_(math.sqrt(2 * self.depth))
            b.ffn.fc2.weight.data.div_(math.sqrt(2 * self.depth))
        lin = self.shared_ada_lin[-1]
        lin.weight.data.mul_(0.1)
        lin.bias.data[:2 * self.C] = gate
        return self

    def add_lvl_embeding(self, feature: torch.Tensor, scale_ind: int, scale_schedule: Schedule) -> torch.Tensor:
        """Adds the level embedding in place (as upstream does) and returns ``feature``."""
        feature += self.lvl_embed.weight[scale_ind]
        return feature

    def get_logits(self, h: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", enabled=False):  # as upstream: CUDA autocast off (CPU autocast is not)
            return self.head(self.head_nm(h.float(), cond_BD.float()))

    def _text_condition(self, label_B_or_BLT: TextCond, negative_label_B_or_BLT: Optional[TextCond], cfg: bool):
        kv_compact, lens, cu_seqlens_k, max_seqlen_k = label_B_or_BLT
        if cfg:
            if negative_label_B_or_BLT is not None:
                kv_un, _, cu_un, max_un = negative_label_B_or_BLT
                kv_compact = torch.cat((kv_compact, kv_un), dim=0)
                cu_seqlens_k = torch.cat((cu_seqlens_k, cu_un[1:] + cu_seqlens_k[-1]))
                max_seqlen_k = max(max_seqlen_k, max_un)
            else:
                kv_un = torch.cat([self.cfg_uncond[:int(le)] for le in lens], dim=0).to(kv_compact.dtype)
                kv_compact = torch.cat((kv_compact, kv_un), dim=0)
                cu_seqlens_k = torch.cat((cu_seqlens_k, cu_seqlens_k[1:] + cu_seqlens_k[-1]))
        kv_compact = self.text_norm(kv_compact)
        sos = cond_BD = self.text_proj_for_sos((kv_compact, cu_seqlens_k, max_seqlen_k))
        ca_kv = (self.text_proj_for_ca(kv_compact), cu_seqlens_k, max_seqlen_k)
        return sos, cond_BD, ca_kv

    @torch.no_grad()
    def autoregressive_infer_cfg(self, vae=None, scale_schedule=None, label_B_or_BLT=None, B=1,
                                 negative_label_B_or_BLT=None, g_seed=None, cfg_list=[], tau_list=[], top_k=0,
                                 top_p=0.0, cfg_insertion_layer=[0], vae_type=32, ret_img=False, trunk_scale=1000,
                                 inference_mode=True, **unused):
        """Generate ``B`` images for the packed prompts ``label_B_or_BLT``.

        ``cfg_list`` / ``tau_list``: guidance weight and temperature per scale (logits =
        ``cfg * cond + (1 - cfg) * uncond``). ``cfg_insertion_layer``: ``[0]`` mixes logits;
        a negative ``k`` mixes the hidden states after block ``depth + k``. Returns
        ``(ret, idx_Bl_list, img)``; ``img`` is a uint8 ``(B, H, W, 3)`` BGR tensor when ``ret_img``.
        """
        K = len(scale_schedule)
        assert len(cfg_list) >= K and len(tau_list) >= K, "cfg_list and tau_list need one entry per scale"
        rng = None
        if g_seed is not None:
            if self.rng.device != self.pos_start.device:
                self.rng = torch.Generator(device=self.pos_start.device)
            self.rng.manual_seed(g_seed)
            rng = self.rng
        use_cfg = any(c != 1 for c in cfg_list)  # upstream: the whole list, exactly 1
        bs = 2 * B if use_cfg else B
        sos, cond_BD, ca_kv = self._text_condition(label_B_or_BLT, negative_label_B_or_BLT, use_cfg)
        last_stage = sos.unsqueeze(1) + self.pos_start.expand(bs, 1, -1)
        with torch.autocast("cuda", enabled=False):
            cond_BD_or_gss = self.shared_ada_lin(cond_BD.float()).float().contiguous()
        # the VAE's grid: twice the token grid under patchify
        vae_schedule = [(t, 2 * h, 2 * w) if self.apply_spatial_patchify else (t, h, w) for t, h, w in scale_schedule]
        summed_codes = 0  # the first codes' sum takes their dtype and memory layout
        mix_after = {self.depth + c for c in cfg_insertion_layer if c < 0}
        for b in self.unregistered_blocks:
            b.sa.kv_caching(True)
        try:
            for si, (_, h, w) in enumerate(scale_schedule):
                if si >= trunk_scale:
                    break
                cfg, tau = cfg_list[si], tau_list[si]
                layer = 0
                for ci, chunk in enumerate(self.block_chunks):
                    if ci == 0 or not self.add_lvl_embeding_only_first_block:
                        last_stage = self.add_lvl_embeding(last_stage, si, scale_schedule)
                    for m in chunk.module:
                        last_stage = m(x=last_stage, cond_BD=cond_BD_or_gss, ca_kv=ca_kv, attn_bias_or_two_vector=None,
                                       scale_schedule=scale_schedule, rope2d_freqs_grid=self.rope2d_freqs_grid, scale_ind=si)
                        if use_cfg and cfg != 1 and layer in mix_after:
                            last_stage = cfg * last_stage[:B] + (1 - cfg) * last_stage[B:]
                            last_stage = torch.cat((last_stage, last_stage), 0)
                        layer += 1
                if use_cfg and cfg != 1 and 0 in cfg_insertion_layer:
                    logits_BlV = self.get_logits(last_stage, cond_BD).mul(1 / tau)
                    logits_BlV = cfg * logits_BlV[:B] + (1 - cfg) * logits_BlV[B:]
                else:
                    logits_BlV = self.get_logits(last_stage[:B], cond_BD[:B]).mul(1 / tau)
                logits_BlV = logits_BlV.reshape(B, -1, 2)
                idx_Bld = sample_with_top_k_top_p_also_inplace_modifying_logits_(
                    logits_BlV, rng=rng, top_k=top_k, top_p=top_p, num_samples=1)[:, :, 0]
                idx_Bld = idx_Bld.reshape(B, h, w, -1)
                if self.apply_spatial_patchify:  # (B, h, w, 4d) -> (B, 2h, 2w, d)
                    idx_Bld = F.pixel_shuffle(idx_Bld.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
                codes = vae.quantizer.lfq.indices_to_codes(idx_Bld.unsqueeze(1), label_type="bit_label")
                if si != K - 1:
                    summed_codes += F.interpolate(codes, size=vae_schedule[-1], mode=vae.quantizer.z_interplote_up)
                    nxt = F.interpolate(summed_codes, size=vae_schedule[si + 1],
                                        mode=vae.quantizer.z_interplote_up).squeeze(-3)
                    if self.apply_spatial_patchify:  # (B, d, 2h, 2w) -> (B, 4d, h, w)
                        nxt = F.pixel_unshuffle(nxt, 2)
                    nxt = nxt.reshape(*nxt.shape[:2], -1).permute(0, 2, 1)  # (B, h*w, d), contiguous here
                    last_stage = self.word_embed(self.norm0_ve(nxt))
                    last_stage = last_stage.repeat(bs // B, 1, 1)
                else:
                    summed_codes += codes
        finally:
            for b in self.unregistered_blocks:
                b.sa.kv_caching(False)
        img = []
        if ret_img:
            img = vae.decode(summed_codes.squeeze(-3))
            img = (img + 1) / 2
            img = img.permute(0, 2, 3, 1).mul_(255).to(torch.uint8).flip(dims=(3,))
        return [], [], img


# ----------------------------------------------------------------------------------------------
class TextEncoder:
    """A small deterministic stand-in for T5: words -> hashed ids -> seeded embeddings + positions.

    ``encode(prompts)`` returns upstream's packed tuple ``(kv_compact, lens, cu_seqlens_k, max_seqlen_k)``.
    """

    def __init__(self, Ct5: int, vocab: int = 4096, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(vocab, Ct5, generator=g)
        self.vocab, self.Ct5 = vocab, Ct5

    def encode(self, prompts: Sequence[str], device=None) -> TextCond:
        if isinstance(prompts, str):
            prompts = [prompts]
        feats = []
        for p in prompts:
            words = p.lower().split() or [""]
            ids = torch.tensor([zlib.crc32(w.encode()) % self.vocab for w in words])
            pos = torch.arange(len(words), dtype=torch.float32)[:, None]
            freq = torch.exp(-math.log(1e4) * torch.arange(0, self.Ct5, 2, dtype=torch.float32) / self.Ct5)
            pe = torch.zeros(len(words), self.Ct5)
            pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
            feats.append(self.table[ids] + 0.1 * pe)
        lens = [f.shape[0] for f in feats]
        cu = F.pad(torch.tensor(lens).cumsum(0), (1, 0)).to(torch.int32)
        kv = torch.cat(feats, 0)
        if device is not None:
            kv, cu = kv.to(device), cu.to(device)
        return kv, lens, cu, max(lens)


# Infinity shapes. "2b" has Infinity-2B's width and depth (C=2048, 32 blocks in 8 chunks);
# "2b-cpu" keeps the width with 8 blocks (one per chunk) for timing on a CPU.
INFINITY_SHAPES: Dict[str, dict] = {
    "tiny": dict(Ct5=32, depth=4, embed_dim=64, num_heads=4, num_block_chunks=2, codebook_dim=8, max_side=16,
                 vae_ch=16, vae_up=2),
    "small": dict(Ct5=64, depth=8, embed_dim=128, num_heads=4, num_block_chunks=4, codebook_dim=16, max_side=32,
                  vae_ch=16, vae_up=3),
    "2b": dict(Ct5=2048, depth=32, embed_dim=2048, num_heads=16, num_block_chunks=8, codebook_dim=32, max_side=64),
    "2b-cpu": dict(Ct5=2048, depth=8, embed_dim=2048, num_heads=16, num_block_chunks=8, codebook_dim=32, max_side=64),
    # Infinity-8B as published: patchified (a token is a 2x2 patch of 14-bit latents, 56 bits), a VAE
    # grid twice the token grid with 8x upsampling, C = 3584 in 40 blocks; "8b-cpu" keeps the width
    # and the layout with 4 blocks (one per chunk); "8b-tiny" is the layout at test size.
    "8b": dict(Ct5=2048, depth=40, embed_dim=3584, num_heads=28, num_block_chunks=8, codebook_dim=14, max_side=64,
               vae_up=3, apply_spatial_patchify=1),
    "8b-cpu": dict(Ct5=2048, depth=4, embed_dim=3584, num_heads=28, num_block_chunks=4, codebook_dim=14, max_side=64,
                   vae_up=3, apply_spatial_patchify=1),
    "8b-tiny": dict(Ct5=32, depth=4, embed_dim=64, num_heads=4, num_block_chunks=2, codebook_dim=6, max_side=16,
                    vae_ch=16, vae_up=1, apply_spatial_patchify=1),
}
_INF_DEFAULTS = dict(mlp_ratio=4.0, vae_ch=32, vae_up=4, gate=1.0, seed=0, add_lvl_embeding_only_first_block=1,
                     text_maxlen=64, apply_spatial_patchify=0, fused_norm=True)


class InfinityBundle:
    """A reference Infinity with its VAE and text encoder, called as upstream code calls them.

    ``bundle.model.autoregressive_infer_cfg(vae=bundle.vae, scale_schedule=bundle.schedule("16:9"),
    label_B_or_BLT=bundle.encode(prompts), B=len(prompts), cfg_list=[3.0] * K, tau_list=[1.0] * K, ...)``
    """

    def __init__(self, model: Infinity, vae: BSQVAE, text: TextEncoder, max_side: int):
        self.model, self.vae, self.text, self.max_side = model, vae, text, max_side

    def encode(self, prompts):
        """Prompts -> upstream's packed ``(kv_compact, lens, cu_seqlens_k, max_seqlen_k)``."""
        return self.text.encode(prompts, device=self.model.pos_start.device)

    def schedule(self, aspect: str = "1:1"):
        """The ``[(1, h, w), ...]`` schedule for ``aspect`` (``"width:height"``, see ``ASPECTS``)."""
        return infinity_schedule(aspect, self.max_side)

    def generate(self, prompts, aspect: str = "1:1", cfg: float = 3.0, tau: float = 1.0, g_seed=0, top_k=0, top_p=0.0,
                 negative_prompts=None, **kwargs):
        """Images ``(B, H, W, 3)`` uint8 BGR, as upstream's ``autoregressive_infer_cfg(..., ret_img=True)``."""
        if isinstance(prompts, str):
            prompts = [prompts]
        sched = self.schedule(aspect)
        neg = None if negative_prompts is None else self.encode(negative_prompts)
        _, _, img = self.model.autoregressive_infer_cfg(
            vae=self.vae, scale_schedule=sched, label_B_or_BLT=self.encode(prompts), B=len(prompts),
            negative_label_B_or_BLT=neg, g_seed=g_seed, cfg_list=[cfg] * len(sched), tau_list=[tau] * len(sched),
            top_k=top_k, top_p=top_p, ret_img=True, **kwargs)
        return img


def reference_infinity(shape: str = "tiny", device: Optional[torch.device] = None, **overrides) -> InfinityBundle:
    """Build a reference Infinity bundle (random weights, eval mode) with ``.model``, ``.vae``, ``.encode``.

    Args:
        shape: one of :data:`INFINITY_SHAPES`.
        **overrides: any shape field (``Ct5``, ``depth``, ``embed_dim``, ``num_heads``,
            ``num_block_chunks``, ``codebook_dim``, ``max_side``, ``vae_ch``, ``vae_up``, ``mlp_ratio``,
            ``add_lvl_embeding_only_first_block``, ``text_maxlen``, ``apply_spatial_patchify``,
            ``fused_norm`` -- False gives upstream's block without fused norms, whose self-attention
            ignores ``scale_ind``), ``gate`` and ``seed``.
    """
    cfg = shape_config(INFINITY_SHAPES, _INF_DEFAULTS, shape, overrides, "Infinity")
    schedules = [infinity_schedule(a, cfg["max_side"]) for a in ASPECTS]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        model = Infinity(Ct5=cfg["Ct5"], depth=cfg["depth"], embed_dim=cfg["embed_dim"], num_heads=cfg["num_heads"],
                         mlp_ratio=cfg["mlp_ratio"], codebook_dim=cfg["codebook_dim"],
                         num_block_chunks=cfg["num_block_chunks"], text_maxlen=cfg["text_maxlen"], schedules=schedules,
                         add_lvl_embeding_only_first_block=cfg["add_lvl_embeding_only_first_block"],
                         apply_spatial_patchify=cfg["apply_spatial_patchify"], fused_norm=cfg["fused_norm"])
        model.init_weights(gate=cfg["gate"], seed=cfg["seed"])
        vae = BSQVAE(codebook_dim=cfg["codebook_dim"], ch=cfg["vae_ch"], num_up=cfg["vae_up"])
    model.eval()
    vae.eval()
    if device is not None:
        model.to(device)
        vae.to(device)
    return InfinityBundle(model, vae, TextEncoder(cfg["Ct5"], seed=cfg["seed"]), cfg["max_side"])


def _build_infinity(shape, device, aspect, cfg) -> ReferenceModel:
    bundle = reference_infinity(shape, device=device)
    sched = bundle.schedule(aspect)
    K = len(sched)
    kw = dict(vae=bundle.vae, scale_schedule=sched, cfg_list=[cfg] * K, tau_list=[1.0] * K, ret_img=True)
    return ReferenceModel(f"reference Infinity '{shape}' ({aspect}, {K} scales, random weights)", bundle.model, kw,
                          bundle.encode)


BUILDERS = {"infinity": ModelBuilder("infinity", "a reference Infinity with random weights", tuple(INFINITY_SHAPES),
                                     tuple(ASPECTS), _build_infinity,
                                     tool_shapes=dict(demo="small", bench="tiny", calibrate="tiny", generate="small"))}
