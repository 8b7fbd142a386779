"""stagevar.metrics: image metrics, feature and Fréchet distances, token agreement, paired changes."""
import pytest
import torch

import torch.nn.functional as F

from stagevar.tools.metrics import (downsample, feature_distance, frechet_distance, lowfreq_features, lowfreq_psnr, lowpass,
                              mean_se, paired_change_stats, psnr, ssim, token_agreement)


def test_image_metrics():
    a = torch.rand(2, 3, 16, 16)
    assert torch.all(psnr(a, a) == 100) and torch.allclose(ssim(a, a), torch.ones(2))
    b = (a + 0.1).clamp(0, 1)
    assert torch.all(psnr(a, b) < 30) and torch.all(ssim(a, b) < 1)
    # a uniform 0.1 offset: MSE 0.01 -> 20 dB exactly
    flat = torch.full((1, 3, 8, 8), 0.4)
    assert abs(float(psnr(flat, flat + 0.1)) - 20.0) < 1e-4


def _smooth_with_detail(g: torch.Generator) -> torch.Tensor:
    """``(4, 3, 48, 48)``: a smooth picture (6x6 noise, upsampled) plus fine noise."""
    smooth = F.interpolate(torch.rand(4, 3, 6, 6, generator=g), size=(48, 48), mode="bilinear", align_corners=False)
    return 0.8 * smooth + 0.2 * torch.rand(4, 3, 48, 48, generator=g)


def test_lowpass_keeps_the_mean_and_drops_detail():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 48, 48, generator=g)
    assert downsample(img, 6).shape == (2, 3, 8, 8) and lowpass(img, 6).shape == img.shape
    assert torch.equal(lowpass(img, 1), img)
    flat = torch.full((1, 3, 12, 12), 0.3)
    assert torch.allclose(lowpass(flat, 4), flat)
    checker = ((torch.arange(48)[:, None] + torch.arange(48)[None]) % 2).float().expand(1, 3, 48, 48)
    assert torch.allclose(lowpass(checker, 6), torch.full_like(checker, 0.5))  # finest detail -> its mean
    assert torch.allclose(downsample(img, 4).mean((2, 3)), img.mean((2, 3)), atol=1e-6)


def test_lowfreq_psnr_ignores_blur_that_full_band_psnr_sees():
    g = torch.Generator().manual_seed(0)
    a = _smooth_with_detail(g)
    assert torch.all(lowfreq_psnr(a, a, 6) == 100)
    blurred = F.conv2d(F.pad(a, (1, 1, 1, 1), mode="replicate"), torch.ones(3, 1, 3, 3) / 9, groups=3)
    full, low = psnr(a, blurred), lowfreq_psnr(a, blurred, 6)
    assert torch.all(full < 30) and torch.all(low > 40)
    # moving the layout is a low-band change: both fall
    moved = a.roll(12, -1)
    assert torch.all(lowfreq_psnr(a, moved, 6) < 20) and torch.all(psnr(a, moved) < 20)


def test_mean_se():
    mean, se = mean_se(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and abs(se - (5 / 3) ** 0.5 / 2) < 1e-12  # sample std / sqrt(n)
    assert mean_se(torch.tensor([7.0])) == (7.0, 0.0)
    assert mean_se(torch.full((5,), 3.0)) == (3.0, 0.0)


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


def _with_moments(z, mean, cov):
    """Rows whose sample mean and (unbiased) covariance are exactly ``mean`` and ``cov``."""
    z = z.double() - z.double().mean(0)
    white = torch.linalg.cholesky(torch.cov(z.t()))
    z = z @ torch.linalg.inv(white).t()  # sample covariance exactly I
    return z @ torch.linalg.cholesky(cov).t() + mean


def test_frechet_distance_with_covariances_that_do_not_commute():
    """Against the value by hand: |dmu|^2 + tr A + tr B - 2 sum sqrt(eig(A B)) (A B is similar to
    A^1/2 B A^1/2, so their square roots have one trace), A and B chosen not to commute."""
    g = torch.Generator().manual_seed(3)
    A = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    B = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    assert not torch.allclose(A @ B, B @ A)
    mu_a, mu_b = torch.tensor([1.0, -1.0], dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64)
    fa = _with_moments(torch.randn(40, 2, generator=g), mu_a, A)
    fb = _with_moments(torch.randn(30, 2, generator=g), mu_b, B)
    ev = torch.linalg.eigvals(A @ B).real
    by_hand = float((mu_a - mu_b).pow(2).sum() + torch.trace(A) + torch.trace(B) - 2 * ev.clamp_min(0).sqrt().sum())
    assert frechet_distance(fa, fb) == pytest.approx(by_hand, rel=1e-9)
    assert frechet_distance(fb, fa) == pytest.approx(by_hand, rel=1e-9)  # symmetric
    assert by_hand == pytest.approx(10.0 + 4.5 - 2 * float(ev.sqrt().sum()))


def test_frechet_distance_of_one_row_is_refused_not_nan():
    with pytest.raises(ValueError, match="two feature rows"):
        frechet_distance(torch.ones(1, 3), torch.ones(5, 3))


def test_feature_distance_by_hand():
    a = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    b = torch.tensor([[3.0, 2.0, 1.0], [5.0, 5.0, 6.0]])
    # centred: (-1, 0, 1) vs (1, 0, -1): cosine -1 -> 2; (-1/3, -1/3, 2/3) vs the same shape -> 0
    assert torch.allclose(feature_distance(a, b), torch.tensor([2.0, 0.0]), atol=1e-6)


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


def test_calibration_kl_is_cond_against_uncond_by_hand():
    """KL(cond || uncond) = sum p log(p / q), with p the conditional branch's distribution: the
    direction matters (the two directions differ for these logits)."""
    import math

    from stagevar.tools.calibrate import _Observer

    cond = torch.tensor([[[math.log(0.7), math.log(0.2), math.log(0.1)]]])
    uncond = torch.tensor([[[math.log(0.2), math.log(0.3), math.log(0.5)]]])

    class Fake:
        def schedule(self, st):
            return [(1, 1)]

        def branch_logits(self, st, x):
            return cond, uncond

    obs = _Observer(Fake(), alphas=())
    obs.scale_output(None, 0, torch.zeros(2, 1, 4))
    p, q = [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]
    forward = sum(a * math.log(a / b) for a, b in zip(p, q))
    backward = sum(b * math.log(b / a) for a, b in zip(p, q))
    assert obs.kl[0] == pytest.approx(forward, rel=1e-5) and abs(obs.kl[0] - backward) > 0.03


def test_quality_change_is_the_method_minus_the_baseline():
    from stagevar.tools.quality import _change

    base = torch.tensor([True, True, False, False])
    ok = torch.tensor([True, False, False, False])  # one lost, none gained: the fraction fell by 1/4
    got = _change("semantic_", base, ok)
    assert got["semantic_consistency"] == 0.25 and got["semantic_consistency_change"] == -0.25
    assert (got["semantic_lost"], got["semantic_gained"]) == (1, 0)
    assert _change("", ok, base)["consistency_change"] == 0.25


def test_gumbel_softmax_with_rng_hard_is_one_hot_and_ignores_memory_layout():
    from stagevar.sampling import gumbel_softmax_with_rng

    logits = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    hard = gumbel_softmax_with_rng(logits, tau=0.5, hard=True, rng=torch.Generator().manual_seed(1))
    assert torch.allclose(hard.sum(-1), torch.ones(3)) and set(hard.flatten().tolist()) <= {0.0, 1.0}
    soft = gumbel_softmax_with_rng(logits, tau=0.5, rng=torch.Generator().manual_seed(1))
    assert torch.equal(hard.argmax(-1), soft.argmax(-1))  # the same noise: hard is soft's argmax
    t = torch.randn(7, 3, generator=torch.Generator().manual_seed(2)).t()  # a non-contiguous (3, 7) view
    a = gumbel_softmax_with_rng(t, rng=torch.Generator().manual_seed(3))
    b = gumbel_softmax_with_rng(t.contiguous(), rng=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)  # the noise is drawn in logical order, whatever the strides


def test_the_cpu_live_heap_reads_glibcs_mallinfo2_where_there_is_one():
    import platform

    from stagevar.tools.timing import _LiveHeap

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallinfo2 is glibc's")
    heap = _LiveHeap()
    assert heap.kind == "cpu_peak_heap_increase_MiB" and heap.read() > 0


def test_gumbel_softmax_without_a_generator_is_torchs_and_says_nothing():
    """No rng: torch's own gumbel-softmax, called without a deprecation warning (torch warns when its
    unused eps is set to anything but its default)."""
    import warnings

    from stagevar.sampling import gumbel_softmax_with_rng

    logits = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.manual_seed(4)
        a = gumbel_softmax_with_rng(logits, tau=0.7)
    torch.manual_seed(4)
    assert torch.equal(a, torch.nn.functional.gumbel_softmax(logits, tau=0.7))
