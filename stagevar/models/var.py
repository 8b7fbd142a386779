"""A reference VAR transformer (class-conditional next-scale prediction), written to be read.

It mirrors the attribute names and call conventions of FoundationVision VAR's ``VAR`` class
(``patch_nums``, ``blocks``, ``class_emb``, ``pos_start``, ``pos_1LC``, ``lvl_embed``,
``lvl_1L``, ``word_embed``, ``shared_ada_lin``, ``get_logits``, ``vae_quant_proxy``,
``vae_proxy``, ``rng``, ``uniform_prob``, ``autoregressive_infer_cfg``), so stagevar's VAR
adapter exercises the same code paths here as on the published model.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..sampling import gumbel_softmax_with_rng, sample_with_top_k_top_p_
from ._registry import ModelBuilder, ReferenceModel
from ._shapes import check_kv_layout, shape_config, vqvae_for
from .vqvae import VQVAE


class FFN(nn.Module):
    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.fused_mlp_func = None

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with an optional KV cache.

    The cache keeps upstream's layouts: ``(B, H, L, c)`` for SDPA (token dim 2) and, when
    ``using_xform`` is set, ``(B, L, H, c)`` as flash-attn/xformers keep it (token dim 1).
    Attention itself always runs through PyTorch SDPA here.
    """

    def __init__(self, block_idx: int, embed_dim: int = 768, num_heads: int = 12, attn_l2_norm: bool = False,
                 kv_layout: str = "BHLc"):
        super().__init__()
        assert embed_dim % num_heads == 0
        self.block_idx, self.num_heads, self.head_dim = block_idx, num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(embed_dim, embed_dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.using_flash = False
        self.using_xform = kv_layout == "BLHc"
        self.caching, self.cached_k, self.cached_v = False, None, None

    def kv_caching(self, enable: bool) -> None:
        self.caching, self.cached_k, self.cached_v = enable, None, None

    def forward(self, x: torch.Tensor, attn_bias: Optional[torch.Tensor]) -> torch.Tensor:
        B, L, C = x.shape
        qkv = F.linear(x, self.mat_qkv.weight, torch.cat((self.q_bias, self.zero_k_bias, self.v_bias)))
        qkv = qkv.view(B, L, 3, self.num_heads, self.head_dim)
        if self.using_xform:
            q, k, v = qkv.unbind(dim=2)  # B L H c
            dim_cat = 1
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(dim=0)  # B H L c
            dim_cat = 2
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            if self.using_xform:
                scale_mul = scale_mul.transpose(1, 2)
            q = F.normalize(q, dim=-1).mul(scale_mul)
            k = F.normalize(k, dim=-1)
        if self.caching:
            if self.cached_k is None:
                self.cached_k, self.cached_v = k, v
            else:
                k = self.cached_k = torch.cat((self.cached_k, k), dim=dim_cat)
                v = self.cached_v = torch.cat((self.cached_v, v), dim=dim_cat)
        if self.using_xform:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        oup = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)
        return self.proj(oup.transpose(1, 2).reshape(B, L, C))


class AdaLNSelfAttn(nn.Module):
    """Pre-norm transformer block whose norms are scaled, shifted and gated by the class condition."""

    def __init__(self, block_idx: int, embed_dim: int, cond_dim: int, shared_aln: bool, num_heads: int,
                 mlp_ratio: float = 4.0, norm_eps: float = 1e-6, attn_l2_norm: bool = False, kv_layout: str = "BHLc"):
        super().__init__()
        self.block_idx, self.C, self.D = block_idx, embed_dim, cond_dim
        self.attn = SelfAttention(block_idx, embed_dim, num_heads, attn_l2_norm, kv_layout)
        self.ffn = FFN(embed_dim, round(embed_dim * mlp_ratio))
        self.ln_wo_grad = nn.LayerNorm(embed_dim, eps=norm_eps, elementwise_affine=False)
        self.shared_aln = shared_aln
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, embed_dim) / embed_dim ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(cond_dim, 6 * embed_dim))
        self.fused_add_norm_fn = None
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor, attn_bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self.shared_aln:
            gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss + cond_BD).unbind(2)
        else:
            gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada_lin(cond_BD).view(-1, 1, 6, self.C).unbind(2)
        x = x + self.attn(self.ln_wo_grad(x).mul(scale1.add(1)).add_(shift1), attn_bias=attn_bias).mul_(gamma1)
        x = x + self.ffn(self.ln_wo_grad(x).mul(scale2.add(1)).add_(shift2)).mul(gamma2)
        return x


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, D: int, norm_eps: float = 1e-6):
        super().__init__()
        self.C, self.D = C, D
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(D, 2 * C))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x_BLC).mul(scale.add(1)).add_(shift)


class SharedAdaLin(nn.Linear):
    def forward(self, cond_BD):
        C = self.weight.shape[0] // 6
        return super().forward(cond_BD).view(-1, 1, 6, C)


class VAR(nn.Module):
    """Class-conditional next-scale-prediction transformer over a :class:`VQVAE`'s token pyramid."""

    def __init__(self, vae_local: VQVAE, num_classes: int = 1000, depth: int = 16, embed_dim: int = 1024,
                 num_heads: int = 16, mlp_ratio: float = 4.0, norm_eps: float = 1e-6, shared_aln: bool = False,
                 cond_drop_rate: float = 0.1, attn_l2_norm: bool = False,
                 patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), kv_layout: str = "BHLc"):
        super().__init__()
        assert embed_dim % num_heads == 0
        self.Cvae, self.V = vae_local.Cvae, vae_local.vocab_size
        self.depth, self.C, self.D, self.num_heads = depth, embed_dim, embed_dim, num_heads
        self.cond_drop_rate = cond_drop_rate
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

        self.vae_proxy: Tuple[VQVAE] = (vae_local,)
        self.vae_quant_proxy = (vae_local.quantize,)
        self.word_embed = nn.Linear(self.Cvae, self.C)

        init_std = math.sqrt(1 / self.C / 3)
        self.num_classes = num_classes
        self.register_buffer("uniform_prob", torch.full((1, num_classes), 1.0 / num_classes), persistent=False)
        self.class_emb = nn.Embedding(num_classes + 1, self.C)
        nn.init.trunc_normal_(self.class_emb.weight, mean=0, std=init_std)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, self.C))
        nn.init.trunc_normal_(self.pos_start, mean=0, std=init_std)
        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, self.C))
        nn.init.trunc_normal_(self.pos_1LC, mean=0, std=init_std)
        self.lvl_embed = nn.Embedding(len(self.patch_nums), self.C)
        nn.init.trunc_normal_(self.lvl_embed.weight, mean=0, std=init_std)

        self.shared_ada_lin = nn.Sequential(nn.SiLU(inplace=False), SharedAdaLin(self.D, 6 * self.C)) if shared_aln else nn.Identity()
        self.blocks = nn.ModuleList([
            AdaLNSelfAttn(i, self.C, self.D, shared_aln, num_heads, mlp_ratio, norm_eps, attn_l2_norm, kv_layout)
            for i in range(depth)
        ])

        # block-causal mask for teacher forcing: a token sees its own scale and all earlier ones
        d = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(self.patch_nums)]).view(1, self.L, 1)
        dT = d.transpose(1, 2)
        self.register_buffer("lvl_1L", dT[:, 0].contiguous())
        self.register_buffer("attn_bias_for_masking",
                             torch.where(d >= dT, 0.0, -torch.inf).reshape(1, 1, self.L, self.L).contiguous())

        self.head_nm = AdaLNBeforeHead(self.C, self.D, norm_eps)
        self.head = nn.Linear(self.C, self.V)

    def init_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02,
                     init_std: float = 0.02, gate: float = 0.0) -> "VAR":
        """Initialise weights.

        ``init_std < 0`` draws every linear layer with std ``1/sqrt(fan_in)`` (variance
        preserving, as a random-weight stand-in for a trained model). ``gate`` is the bias of the
        two residual gates of every block (``gamma1``, ``gamma2``). Upstream trains from gates near zero (``init_adaln_gamma=1e-5``), which makes
        an untrained model an identity map; random-weight timing and tests want ``gate`` ~ 1.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                std = init_std if init_std > 0 else m.in_features ** -0.5  # < 0: variance-preserving
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.head.weight.data.mul_(init_head / self.head.weight.data.std().clamp_min(1e-12))
        C = self.C
        for b in self.blocks:
            if b.shared_aln:
                b.ada_gss.data[:, :, 2:].mul_(init_adaln)
                b.ada_gss.data[:, :, :2].mul_(init_adaln_gamma).add_(gate)
            else:
                lin = b.ada_lin[-1]
                lin.weight.data[2 * C:].mul_(init_adaln)
                lin.weight.data[:2 * C].mul_(init_adaln_gamma)
                lin.bias.data[:2 * C].fill_(gate)
            b.attn.proj.weight.data.div_(math.sqrt(2 * self.depth))
            b.ffn.fc2.weight.data.div_(math.sqrt(2 * self.depth))
        return self

    def get_logits(self, h: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """``(B, l, C)`` hidden states -> ``(B, l, V)`` fp32 logits."""
        return self.head(self.head_nm(h.float(), cond_BD).float()).float()

    def _generator(self, g_seed: Optional[int]) -> Optional[torch.Generator]:
        if g_seed is None:
            return None
        device = self.lvl_1L.device
        if self.rng.device != device:
            self.rng = torch.Generator(device=device)
        self.rng.manual_seed(g_seed)
        return self.rng

    @torch.no_grad()
    def autoregressive_infer_cfg(self, B: int, label_B: Optional[Union[int, torch.LongTensor]], g_seed: Optional[int] = None,
                                 cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0, more_smooth: bool = False) -> torch.Tensor:
        """Generate ``B`` images ``(B, 3, H, W)`` in [0, 1] with classifier-free guidance.

        ``label_B``: ``(B,)`` class ids, one int for all, or None (uniformly random). The
        guidance weight ramps with the scale: ``t = cfg * si / (K - 1)``.
        """
        rng = self._generator(g_seed)
        if label_B is None:
            label_B = torch.multinomial(self.uniform_prob, num_samples=B, replacement=True, generator=rng).reshape(B)
        elif isinstance(label_B, int):
            label_B = torch.full((B,), fill_value=self.num_classes if label_B < 0 else label_B, device=self.lvl_1L.device)

        sos = cond_BD = self.class_emb(torch.cat((label_B, torch.full_like(label_B, fill_value=self.num_classes)), dim=0))
        lvl_pos = self.lvl_embed(self.lvl_1L) + self.pos_1LC
        next_token_map = (sos.unsqueeze(1).expand(2 * B, self.first_l, -1)
                          + self.pos_start.expand(2 * B, self.first_l, -1) + lvl_pos[:, :self.first_l])
        cur_L = 0
        f_hat = sos.new_zeros(B, self.Cvae, self.patch_nums[-1], self.patch_nums[-1])
        for b in self.blocks:
            b.attn.kv_caching(True)
        try:
            cond_BD_or_gss = self.shared_ada_lin(cond_BD)
            for si, pn in enumerate(self.patch_nums):
                ratio = si / self.num_stages_minus_1
                cur_L += pn * pn
                x = next_token_map
                for b in self.blocks:
                    x = b(x=x, cond_BD=cond_BD_or_gss, attn_bias=None)
                logits_BlV = self.get_logits(x, cond_BD)
                t = cfg * ratio
                logits_BlV = (1 + t) * logits_BlV[:B] - t * logits_BlV[B:]
                idx_Bl = sample_with_top_k_top_p_(logits_BlV, rng=rng, top_k=top_k, top_p=top_p, num_samples=1)[:, :, 0]
                if not more_smooth:
                    h_BChw = self.vae_quant_proxy[0].embedding(idx_Bl)
                else:
                    gum_t = max(0.27 * (1 - ratio * 0.95), 0.005)
                    h_BChw = gumbel_softmax_with_rng(logits_BlV.mul(1 + ratio), tau=gum_t, hard=False, dim=-1, rng=rng) \
                        @ self.vae_quant_proxy[0].embedding.weight.unsqueeze(0)
                h_BChw = h_BChw.transpose_(1, 2).reshape(B, self.Cvae, pn, pn)
                f_hat, next_token_map = self.vae_quant_proxy[0].get_next_autoregressive_input(si, len(self.patch_nums), f_hat, h_BChw)
                if si != self.num_stages_minus_1:
                    next_token_map = next_token_map.view(B, self.Cvae, -1).transpose(1, 2)
                    next_token_map = self.word_embed(next_token_map) + lvl_pos[:, cur_L:cur_L + self.patch_nums[si + 1] ** 2]
                    next_token_map = next_token_map.repeat(2, 1, 1)
        finally:
            for b in self.blocks:
                b.attn.kv_caching(False)
        return self.vae_proxy[0].fhat_to_img(f_hat).add_(1).mul_(0.5)

    def forward(self, label_B: torch.LongTensor, x_BLCv_wo_first_l: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(B, L, V)`` under the block-causal mask.

        ``x_BLCv_wo_first_l``: ``(B, L - first_l, Cvae)`` from ``quantize.idxBl_to_var_input``.
        Labels are dropped to the null class with ``cond_drop_rate`` in training mode only.
        """
        B = x_BLCv_wo_first_l.shape[0]
        if self.training and self.cond_drop_rate > 0:
            label_B = torch.where(torch.rand(B, device=label_B.device) < self.cond_drop_rate, self.num_classes, label_B)
        sos = cond_BD = self.class_emb(label_B)
        sos = sos.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
        x_BLC = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l.float())), dim=1)
        x_BLC = x_BLC + self.lvl_embed(self.lvl_1L.expand(B, -1)) + self.pos_1LC
        attn_bias = self.attn_bias_for_masking
        cond_BD_or_gss = self.shared_ada_lin(cond_BD)
        for b in self.blocks:
            x_BLC = b(x=x_BLC, cond_BD=cond_BD_or_gss, attn_bias=attn_bias)
        return self.get_logits(x_BLC.float(), cond_BD)


# VAR shapes: upstream ties width to depth (C = 64 * depth, heads = depth). "tiny" and "small"
# are for tests and quick demos.
_P256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
_P512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
VAR_SHAPES: Dict[str, dict] = {
    "tiny": dict(depth=2, embed_dim=64, num_heads=4, patch_nums=(1, 2, 3, 4), vocab_size=64, z_channels=8,
                 ch=16, num_down=2, num_classes=10),
    "small": dict(depth=4, embed_dim=128, num_heads=4, patch_nums=(1, 2, 3, 4, 5, 6, 8), vocab_size=256,
                  z_channels=16, ch=32, num_down=3, num_classes=10),
    "d16": dict(depth=16, embed_dim=1024, num_heads=16, patch_nums=_P256),
    "d20": dict(depth=20, embed_dim=1280, num_heads=20, patch_nums=_P256),
    "d24": dict(depth=24, embed_dim=1536, num_heads=24, patch_nums=_P256),
    "d30": dict(depth=30, embed_dim=1920, num_heads=30, patch_nums=_P256),
    "d36": dict(depth=36, embed_dim=2304, num_heads=36, patch_nums=_P512),
}
_VAR_DEFAULTS = dict(vocab_size=4096, z_channels=32, ch=64, num_down=4, num_classes=1000, mlp_ratio=4.0,
                     attn_l2_norm=True, shared_aln=False, kv_layout="BHLc", gate=1.0, seed=0)


def reference_var(shape: str = "tiny", device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None,
                  **overrides) -> VAR:
    """Build a reference VAR (with its VQVAE) with random weights, in eval mode.

    Args:
        shape: one of :data:`VAR_SHAPES` (``"tiny"`` runs in milliseconds; ``"d16"``..``"d36"``
            match upstream's widths and depths).
        device, dtype: where to put it.
        **overrides: any shape field (``depth``, ``embed_dim``, ``num_heads``, ``patch_nums``,
            ``vocab_size``, ``z_channels``, ``ch``, ``num_down``, ``num_classes``, ``mlp_ratio``,
            ``attn_l2_norm``, ``shared_aln``, ``kv_layout`` ``"BHLc"``/``"BLHc"``), ``gate`` (the
            residual gate magnitude, ~1 for realistic random-weight behaviour) and ``seed``.
    """
    cfg = shape_config(VAR_SHAPES, _VAR_DEFAULTS, shape, overrides, "VAR")
    check_kv_layout(cfg["kv_layout"])
    patch_nums = tuple(cfg["patch_nums"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        vae = vqvae_for(cfg)
        var = VAR(vae, num_classes=cfg["num_classes"], depth=cfg["depth"], embed_dim=cfg["embed_dim"],
                  num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"], shared_aln=cfg["shared_aln"],
                  attn_l2_norm=cfg["attn_l2_norm"], patch_nums=patch_nums, kv_layout=cfg["kv_layout"])
        var.init_weights(init_std=-1, gate=cfg["gate"])
    var.eval()
    vae.eval()
    if device is not None or dtype is not None:
        var.to(device=device, dtype=dtype)
        vae.to(device=device, dtype=dtype)
    return var


def _build_var(shape, device, aspect, cfg) -> ReferenceModel:
    return ReferenceModel(f"reference VAR '{shape}' (random weights)", reference_var(shape, device=device), dict(cfg=cfg))


BUILDERS = {"var": ModelBuilder("var", "a reference VAR with random weights", tuple(VAR_SHAPES), (), _build_var,
                                tool_shapes=dict(demo="d16", bench="tiny", calibrate="small", generate="d16"))}
