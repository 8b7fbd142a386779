"""Image and sample-set metrics the tools share: PSNR (full band and low band), SSIM, low-pass
filtering, feature distances, Fréchet distance, token agreement, paired change statistics and
per-sample means with their standard error. Tensors in, numbers out; no model here.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``(B, 3, H, W)`` images in [0, 1] (capped at 100 for identical images)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).clamp_max(100.0)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Per-image SSIM of ``(B, 3, H, W)`` images in [0, 1] (uniform window, mean over channels)."""
    a, b = a.float(), b.float()
    window = max(1, min(window, a.shape[-1], a.shape[-2]))

    def pool(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, window, stride=1)

    mu_a, mu_b = pool(a), pool(b)
    var_a = pool(a * a) - mu_a ** 2
    var_b = pool(b * b) - mu_b ** 2
    cov = pool(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def downsample(img: torch.Tensor, factor: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C, H // factor, W // factor)``: the mean of each ``factor x factor`` block."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    return img.float() if factor == 1 else F.avg_pool2d(img.float(), factor)


def lowpass(img: torch.Tensor, factor: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C, H, W)``: the image block-averaged by ``factor`` and resized back
    (bilinear), so it keeps colours and coarse layout and drops detail finer than ``factor`` pixels."""
    if factor == 1:
        return img.float()
    return F.interpolate(downsample(img, factor), size=img.shape[-2:], mode="bilinear", align_corners=False)


def lowfreq_psnr(a: torch.Tensor, b: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """Per-image PSNR in dB of the low band: :func:`psnr` of ``lowpass(a)`` against ``lowpass(b)``.

    ``a``, ``b``: ``(B, 3, H, W)`` in [0, 1]; capped at 100 like :func:`psnr`. Blurring an image
    lowers its full-band PSNR and leaves this one nearly unchanged."""
    return psnr(lowpass(a, factor), lowpass(b, factor))


def mean_se(values: torch.Tensor) -> Tuple[float, float]:
    """``(mean, standard error of the mean)`` of ``(n,)`` per-sample values (SE 0 for one sample)."""
    v = values.double().flatten()
    se = float(v.std(unbiased=True) / len(v) ** 0.5) if len(v) > 1 else 0.0
    return float(v.mean()), se


def lowfreq_features(img: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` -> ``(B, 192)``: the image area-downsampled to 8x8 (colour and coarse layout).

    Needs no weights; it measures where colours sit in the picture, not learned semantics. Pass
    a CLIP or DINO image embedding as a feature function to measure semantics.
    """
    return F.adaptive_avg_pool2d(img.float(), 8).flatten(1)


def feature_distance(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """Per row of ``(N, F)`` features: 1 - cosine similarity of the centred vectors."""
    fa = fa.float() - fa.float().mean(1, keepdim=True)
    fb = fb.float() - fb.float().mean(1, keepdim=True)
    return 1 - F.cosine_similarity(fa, fb, dim=1, eps=1e-8)


def frechet_distance(fa: torch.Tensor, fb: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``(N, F)`` and ``(M, F)``
    (each needs two rows at least: one row has no covariance)."""
    if fa.shape[0] < 2 or fb.shape[0] < 2:
        raise ValueError(f"frechet_distance needs at least two feature rows per set (a covariance), got "
                         f"{fa.shape[0]} and {fb.shape[0]}")
    fa, fb = fa.double(), fb.double()
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    ca, cb = torch.cov(fa.t()), torch.cov(fb.t())

    def sqrtm(m: torch.Tensor) -> torch.Tensor:
        ev, V = torch.linalg.eigh((m + m.t()) / 2)
        return V @ torch.diag(ev.clamp_min(0).sqrt()) @ V.t()

    sa = sqrtm(ca)
    cross = sqrtm(sa @ cb @ sa)
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(ca + cb - 2 * cross))


def token_agreement(tokens: Mapping[int, torch.Tensor], reference: Mapping[int, torch.Tensor]) -> Dict[int, Optional[float]]:
    """Per scale index, the fraction of sampled token ids equal to the reference's.

    ``tokens`` / ``reference``: ``{scale: ids}`` (``(B, M)`` or ``(B, M, bits)``). A scale one side
    did not sample (skipped), or sampled at another shape, maps to None.
    """
    out: Dict[int, Optional[float]] = {}
    for si in sorted(set(tokens) | set(reference)):
        ids, ref = tokens.get(si), reference.get(si)
        same = ids is not None and ref is not None and ids.shape == ref.shape
        out[si] = float((ids == ref).float().mean()) if same else None
    return out


def paired_change_stats(base_ok: torch.Tensor, ok: torch.Tensor) -> Dict:
    """The change in a correct fraction between two paired runs over the same samples.

    ``base_ok``, ``ok``: ``(n,)`` booleans (sample ``i`` judged correct under the baseline / the
    method). Returns ``n``, the samples ``lost`` (right under the baseline, wrong here) and
    ``gained``, and the standard error of the change in the correct fraction,
    ``sqrt(lost + gained - (gained - lost)^2 / n) / n`` (the paired, McNemar-style variance).
    """
    n = len(ok)
    lost = int((base_ok & ~ok).sum())
    gained = int((~base_ok & ok).sum())
    se = max(lost + gained - (gained - lost) ** 2 / n, 0.0) ** 0.5 / n
    return dict(n=n, lost=lost, gained=gained, change_se=se)


__all__ = ["psnr", "ssim", "downsample", "lowpass", "lowfreq_psnr", "mean_se", "lowfreq_features", "feature_distance", "frechet_distance", "token_agreement",
           "paired_change_stats"]
