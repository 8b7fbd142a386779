"""stagevar.metrics: image metrics, feature and Fréchet distances, token agreement, paired changes."""
import torch

from stagevar.metrics import (feature_distance, frechet_distance, lowfreq_features, paired_change_stats, psnr, ssim,
                              token_agreement)


def test_image_metrics():
    a = torch.rand(2, 3, 16, 16)
    assert torch.all(psnr(a, a) == 100) and torch.allclose(ssim(a, a), torch.ones(2))
    b = (a + 0.1).clamp(0, 1)
    assert torch.all(psnr(a, b) < 30) and torch.all(ssim(a, b) < 1)
    # a uniform 0.1 offset: MSE 0.01 -> 20 dB exactly
    flat = torch.full((1, 3, 8, 8), 0.4)
    assert abs(float(psnr(flat, flat + 0.1)) - 20.0) < 1e-4


def test_feature_distance_ignores_offset_and_scale():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(4, 32, generator=g)
    assert torch.allclose(feature_distance(f, 3 * f + 1), torch.zeros(4), atol=1e-6)
    assert torch.allclose(feature_distance(f, -f), torch.full((4,), 2.0), atol=1e-6)
    img = torch.rand(2, 3, 32, 32, generator=g)
    assert lowfreq_features(img).shape == (2, 3 * 8 * 8)


def test_frechet_distance_of_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g)
    b = torch.randn(4000, 3, generator=g) + torch.tensor([2.0, 0.0, 0.0])
    assert abs(frechet_distance(a, a)) < 1e-6
    assert abs(frechet_distance(a, b) - 4.0) < 0.3  # |mu|^2 = 4, same covariance
    c = torch.randn(4000, 3, generator=g) * 2  # var 4: trace term 3 * (1 + 4 - 2*2) = 3
    assert abs(frechet_distance(a, c) - 3.0) < 0.4


def test_token_agreement_per_scale():
    ref = {0: torch.tensor([[1, 2]]), 1: torch.tensor([[1, 2, 3, 4]]), 2: torch.tensor([[5, 5]])}
    got = {0: torch.tensor([[1, 2]]), 1: torch.tensor([[1, 0, 3, 0]]), 2: torch.tensor([[5, 5, 5]])}
    assert token_agreement(got, ref) == {0: 1.0, 1: 0.5, 2: None}
    assert token_agreement({0: ref[0]}, ref) == {0: 1.0, 1: None, 2: None}  # scales skipped


def test_paired_change_stats():
    base = torch.tensor([True, True, True, False, False, True, True, True])
    ok = torch.tensor([True, False, True, True, False, False, True, True])
    s = paired_change_stats(base, ok)
    assert (s["n"], s["lost"], s["gained"]) == (8, 2, 1)
    # change = (gained - lost) / n = -1/8; SE = sqrt(3 - 1/8) / 8
    assert abs(s["change_se"] - (3 - 1 / 8) ** 0.5 / 8) < 1e-12
    same = paired_change_stats(base, base.clone())
    assert same["lost"] == same["gained"] == 0 and same["change_se"] == 0.0
