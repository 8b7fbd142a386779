"""A small multi-scale residual VQ tokenizer with one shared codebook (VAR-style).

Attribute names and call conventions follow FoundationVision VAR's ``VQVAE`` /
``VectorQuantizer2`` so that stagevar's VAR adapter runs on this model and on upstream's alike:
``Cvae``, ``vocab_size``, ``quantize.embedding``, ``quantize.get_next_autoregressive_input``,
``quantize.idxBl_to_var_input``, ``img_to_idxBl``, ``fhat_to_img``.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class Phi(nn.Conv2d):
    """3x3 conv refining an upsampled residual: ``h * (1 - ratio) + conv(h) * ratio``."""

    def __init__(self, embed_dim: int, quant_resi: float):
        super().__init__(embed_dim, embed_dim, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw.mul(1 - self.resi_ratio) + super().forward(h_BChw).mul_(self.resi_ratio)


class PhiPartiallyShared(nn.Module):
    """``K`` Phi convs shared across scales; indexed by the scale's progress in [0, 1]."""

    def __init__(self, qresi_ls: nn.ModuleList):
        super().__init__()
        self.qresi_ls = qresi_ls
        K = len(qresi_ls)
        self.ticks = torch.linspace(1 / 3 / K, 1 - 1 / 3 / K, K).tolist() if K > 1 else [0.5]

    def __getitem__(self, at_from_0_to_1: float) -> Phi:
        j = min(range(len(self.ticks)), key=lambda i: abs(self.ticks[i] - at_from_0_to_1))
        return self.qresi_ls[j]


class VectorQuantizer2(nn.Module):
    """Multi-scale residual quantizer: scale ``k`` quantizes what scales ``< k`` left."""

    def __init__(self, vocab_size: int, Cvae: int, v_patch_nums: Sequence[int], quant_resi: float = 0.5,
                 share_quant_resi: int = 4, beta: float = 0.25):
        super().__init__()
        self.vocab_size, self.Cvae, self.beta = vocab_size, Cvae, beta
        self.v_patch_nums = tuple(v_patch_nums)
        self.embedding = nn.Embedding(vocab_size, Cvae)
        nn.init.uniform_(self.embedding.weight, -1 / vocab_size, 1 / vocab_size)
        self.quant_resi = PhiPartiallyShared(nn.ModuleList([Phi(Cvae, quant_resi) for _ in range(share_quant_resi)]))

    def _resi(self, si: int) -> Phi:
        SN = len(self.v_patch_nums)
        return self.quant_resi[si / (SN - 1) if SN > 1 else 0.0]

    def _nearest(self, z_NC: torch.Tensor) -> torch.Tensor:
        E_VC = self.embedding.weight
        d_NV = z_NC.pow(2).sum(1, keepdim=True) + E_VC.pow(2).sum(1) - 2 * z_NC @ E_VC.t()
        return d_NV.argmin(dim=1)

    def f_to_idxBl_or_fhat(self, f_BChw: torch.Tensor, to_fhat: bool) -> List[torch.Tensor]:
        """Quantize a latent scale by scale. Returns per scale ``(B, pn*pn)`` ids or the running ``f_hat``."""
        B, C, H, W = f_BChw.shape
        f_rest = f_BChw.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        out = []
        SN = len(self.v_patch_nums)
        for si, pn in enumerate(self.v_patch_nums):
            z = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != SN - 1 else f_rest
            idx_N = self._nearest(z.permute(0, 2, 3, 1).reshape(-1, C))
            h = self.embedding(idx_N).view(B, pn, pn, C).permute(0, 3, 1, 2)
            h = F.interpolate(h, size=(H, W), mode="bicubic") if si != SN - 1 else h
            h = self._resi(si)(h)
            f_hat = f_hat + h
            f_rest = f_rest - h
            out.append(f_hat.clone() if to_fhat else idx_N.view(B, pn * pn))
        return out

    def idxBl_to_var_input(self, gt_ms_idx_Bl: List[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing inputs ``(B, L - first_l, Cvae)``: each scale's input from the ids before it."""
        B = gt_ms_idx_Bl[0].shape[0]
        C, HW = self.Cvae, self.v_patch_nums[-1]
        SN = len(self.v_patch_nums)
        f_hat = gt_ms_idx_Bl[0].new_zeros(B, C, HW, HW, dtype=torch.float32)
        inputs = []
        for si in range(SN - 1):
            pn = self.v_patch_nums[si]
            h = self.embedding(gt_ms_idx_Bl[si]).transpose(1, 2).reshape(B, C, pn, pn)
            f_hat = f_hat + self._resi(si)(F.interpolate(h, size=(HW, HW), mode="bicubic"))
            nxt = self.v_patch_nums[si + 1]
            inputs.append(F.interpolate(f_hat, size=(nxt, nxt), mode="area").view(B, C, -1).transpose(1, 2))
        return torch.cat(inputs, dim=1) if inputs else f_hat.new_zeros(B, 0, C)

    def get_next_autoregressive_input(self, si: int, SN: int, f_hat: torch.Tensor,
                                      h_BChw: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Add scale ``si``'s codes ``h_BChw`` to ``f_hat`` (in place); return it and the next scale's input map."""
        HW = self.v_patch_nums[-1]
        if si != SN - 1:
            h = self._resi(si)(F.interpolate(h_BChw, size=(HW, HW), mode="bicubic"))
            f_hat.add_(h)
            nxt = self.v_patch_nums[si + 1]
            return f_hat, F.interpolate(f_hat, size=(nxt, nxt), mode="area")
        f_hat.add_(self._resi(si)(h_BChw))
        return f_hat, f_hat

    def forward(self, f_BChw: torch.Tensor):
        """Training pass: straight-through ``f_hat`` and the VQ loss."""
        f_hat = self.f_to_idxBl_or_fhat(f_BChw, to_fhat=True)[-1]
        # codebook term pulls the codes to the encoder output; the commitment term (beta) the reverse
        vq_loss = F.mse_loss(f_hat, f_BChw.detach()) + F.mse_loss(f_hat.detach(), f_BChw) * self.beta
        return (f_hat.detach() - f_BChw.detach()).add_(f_BChw), vq_loss


class _ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.net = nn.Sequential(nn.GroupNorm(min(8, ch), ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                 nn.GroupNorm(min(8, ch), ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x):
        return x + self.net(x)


class Encoder(nn.Module):
    def __init__(self, ch: int, z_channels: int, num_down: int):
        super().__init__()
        layers: List[nn.Module] = [nn.Conv2d(3, ch, 3, padding=1)]
        for _ in range(num_down):
            layers += [_ResBlock(ch), nn.Conv2d(ch, ch, 4, stride=2, padding=1)]
        layers += [_ResBlock(ch), nn.GroupNorm(min(8, ch), ch), nn.SiLU(), nn.Conv2d(ch, z_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, ch: int, z_channels: int, num_up: int):
        super().__init__()
        layers: List[nn.Module] = [nn.Conv2d(z_channels, ch, 3, padding=1), _ResBlock(ch)]
        for _ in range(num_up):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1), _ResBlock(ch)]
        layers += [nn.GroupNorm(min(8, ch), ch), nn.SiLU(), nn.Conv2d(ch, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


class VQVAE(nn.Module):
    """Image ``(B, 3, H, W)`` in [-1, 1] <-> multi-scale token ids on a ``(H/2^n)``-sided latent."""

    def __init__(self, vocab_size: int = 4096, z_channels: int = 32, ch: int = 64, num_down: int = 4,
                 v_patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), quant_resi: float = 0.5,
                 share_quant_resi: int = 4, beta: float = 0.25):
        super().__init__()
        self.Cvae, self.vocab_size = z_channels, vocab_size
        self.downsample = 2 ** num_down
        self.encoder = Encoder(ch, z_channels, num_down)
        self.decoder = Decoder(ch, z_channels, num_down)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, 3, padding=1)
        self.quantize = VectorQuantizer2(vocab_size, z_channels, v_patch_nums, quant_resi, share_quant_resi, beta)

    def img_to_f(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(img_B3HW))

    def img_to_idxBl(self, inp_img_no_grad: torch.Tensor) -> List[torch.Tensor]:
        """Per scale ``(B, pn*pn)`` token ids of an image batch in [-1, 1]."""
        return self.quantize.f_to_idxBl_or_fhat(self.img_to_f(inp_img_no_grad), to_fhat=False)

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Decode an accumulated latent ``(B, Cvae, pn, pn)`` to an image in [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    def forward(self, img_B3HW: torch.Tensor):
        """Training pass: reconstruction and VQ loss."""
        f_hat, vq_loss = self.quantize(self.img_to_f(img_B3HW))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss
