"""calibrate(): shapes, ranges, a planted low-rank stage, recommendation, JSON."""
import dataclasses
import json

import pytest
import torch

import stagevar
from stagevar.tools.calibrate import Calibration, calibrate, energy_ranks
from stagevar.models import reference_var


def test_energy_ranks_of_planted_low_rank_matrices():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=g) @ torch.randn(3, 40, generator=g) + 5.0  # rank 3 + a constant
    r = energy_ranks(x, [0.5, 0.999999])
    assert r[0] <= 3 and r[1] == 3
    full = energy_ranks(torch.randn(30, 40, generator=g), [0.999999])
    assert full[0] >= 28
    assert energy_ranks(torch.ones(5, 4), [0.9]) == [1]


def test_energy_ranks_centre_each_channel_over_the_tokens():
    """A mean token shared by every token (an offset that differs by channel) is no direction of
    variation: the ranks of ``x + v`` are those of ``x``, for tokens fewer or more than channels."""
    g = torch.Generator().manual_seed(1)
    for M, C in ((60, 40), (20, 50)):
        x = torch.randn(M, 2, generator=g) @ torch.randn(2, C, generator=g)
        v = 10.0 * torch.randn(1, C, generator=g)
        assert energy_ranks(x + v, [0.5, 0.999999]) == energy_ranks(x - x.mean(0), [0.5, 0.999999])
        assert energy_ranks(x + v, [0.999999]) == [2]


def test_calibration_report_shapes_and_ranges(small, tmp_path):
    cal = calibrate(small, [0, 3, 5], seeds=[0], cfg=3.0, unit_blocks=2)
    K = len(small.patch_nums)
    assert len(cal.psnr_to_final) == len(cal.kl_cond_uncond) == len(cal.one_branch_psnr) == K
    assert cal.psnr_to_final[-1] == 100.0 and cal.feature_dist_to_final[-1] < 1e-6
    assert cal.one_branch_psnr[0] is None and all(v is not None for v in cal.one_branch_psnr[1:])
    assert all(k >= 0 for k in cal.kl_cond_uncond)
    assert len(cal.rank_ratio_mean) == K and all(len(s) == 2 for s in cal.rank_ratio_mean)
    for si, pn in enumerate(small.patch_nums):
        M = pn * pn
        for unit in cal.rank_ratio_mean[si]:
            assert len(unit) == len(cal.alphas)
            ranks = [r * min(M, small.C) for r in unit]
            assert all(1 - 1e-9 <= k <= min(M, small.C) + 1e-9 for k in ranks)
            assert ranks == sorted(ranks)  # higher alpha, higher rank
    assert "calibration (var" in str(cal)
    path = tmp_path / "cal.json"
    cal.save(path)
    assert Calibration.load(path) == cal
    cfg = cal.recommend(alpha=0.96, max_rank_ratio=None)
    assert cfg.alpha == 0.96 and 1 <= cfg.refine_start < K and cfg.unit_blocks == 2
    stagevar.accelerate(small, cfg)
    img = small.autoregressive_infer_cfg(B=2, label_B=torch.tensor([0, 1]), g_seed=0, cfg=3.0)
    assert torch.isfinite(img).all()
    assert stagevar.last_report(small).scales[-1].mode == "uncond-only+low-rank"
    # scales whose measured ratio exceeds max_rank_ratio run one branch at full rank: thresholds
    # that put the refinement stage at scale 1 give several scales, with planted ratios
    planted = [[[0.1 * si] * len(cal.alphas)] * 2 for si in range(K)]  # mean ratio of scale si: 0.1 * si
    early = dataclasses.replace(cal, rank_ratio_mean=planted)
    loose = dict(min_psnr=-1.0, max_feature_dist=1e9, min_ssim=-1.0)
    capped = early.recommend(alpha=0.96, max_rank_ratio=0.35, **loose)
    assert capped.refine_start == 1 and sorted(capped.rank_table) == [1, 2, 3]
    assert list(capped.rank_table[2][0.96]) == [0.2, 0.2]
    assert sorted(early.recommend(alpha=0.96, max_rank_ratio=None, **loose).rank_table) == list(range(1, K))
    none_low = cal.recommend(alpha=0.96, max_rank_ratio=0.0)
    assert none_low.rank_table == {} and none_low.alpha is None and none_low.branch == "uncond"
    with pytest.raises(stagevar.ConfigError, match="was not measured"):
        cal.recommend(alpha=0.5)


def test_planted_low_rank_late_stage_is_found():
    """With rank-2 token embeddings and no position embeddings the first unit's input at
    scales > 0 is rank <= 2 after centring; an ordinary model's is not."""
    def measure(var):
        cal = calibrate(var, [1, 2], seeds=[0], one_branch_sweep=False, unit_blocks=len(var.blocks))
        return [cal.rank_ratio_mean[si][0][cal.alphas.index(0.999)] * min(pn * pn, var.C)
                for si, pn in enumerate(var.patch_nums)]

    plain = measure(reference_var("small"))
    planted = reference_var("small")
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        W = planted.word_embed.weight
        planted.word_embed.weight.copy_(torch.randn(W.shape[0], 2, generator=g) @ torch.randn(2, W.shape[1], generator=g))
        planted.pos_1LC.zero_()
    low = measure(planted)
    assert all(r <= 2 + 1e-9 for r in low[1:])
    assert plain[-1] > 10 * low[-1]


def test_calibrate_bad_inputs(tiny):
    with pytest.raises(ValueError, match="conditions is empty; give at least one of class labels or prompts"):
        calibrate(tiny, [])
    with pytest.raises(ValueError, match="not B"):
        calibrate(tiny, [0], B=2)
    with pytest.raises(ValueError, match="outside 0..9"):
        calibrate(tiny, [12])
    with pytest.raises(stagevar.UnsupportedModelError):
        calibrate(torch.nn.Linear(2, 2), [0])


def test_calibrate_leaves_acceleration_as_it_was(tiny):
    stagevar.accelerate(tiny, "var-d16")
    calibrate(tiny, [0], one_branch_sweep=False)
    assert stagevar.current_config(tiny).name == "var-d16"


def test_calibrate_infinity_with_prompts():
    from stagevar.models import reference_infinity

    b = reference_infinity("tiny")
    sched = b.schedule("16:9")
    K = len(sched)
    kw = dict(vae=b.vae, scale_schedule=sched, cfg_list=[3.0] * K, tau_list=[1.0] * K)
    cal = calibrate(b.model, ["a red cat", "a blue boat on the sea"], encode=b.encode, **kw)
    assert cal.family == "infinity" and [s[1:] for s in cal.schedule] == [[h, w] for _, h, w in sched]
    assert len(cal.rank_ratio_mean[-1]) == len(b.model.block_chunks)
    assert cal.psnr_to_final[-1] == 100.0 and all(v is not None for v in cal.one_branch_psnr[1:])
    cfg = cal.recommend()
    with stagevar.accelerated(b.model, cfg):
        _, _, img = b.model.autoregressive_infer_cfg(label_B_or_BLT=b.encode(["x", "y"]), B=2, g_seed=0, ret_img=True, **kw)
    assert img.shape[0] == 2
    with pytest.raises(ValueError, match="pass encode="):
        calibrate(b.model, ["a cat"], **kw)
    with pytest.raises(ValueError, match="set some cfg_list entry != 1"):
        calibrate(b.model, ["a cat"], encode=b.encode, **dict(kw, cfg_list=[1.0] * K))


def test_calibration_plot_writes_a_png(tmp_path, tiny):
    pytest.importorskip("matplotlib")
    cal = calibrate(tiny, [0, 1], one_branch_sweep=False)
    cal.plot(str(tmp_path / "cal.png"))
    assert (tmp_path / "cal.png").stat().st_size > 1000


def test_calibration_plot_draws_every_curve_with_its_legend(tmp_path, tiny, monkeypatch):
    """Each measured curve is drawn from its field (PSNR shown up to 60 dB) and named in a legend;
    the recommended boundary is the dotted line half a scale before refine_start."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    cal = calibrate(tiny, [0, 1], one_branch_sweep=False)
    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: drawn.append(fig))
    cal.plot(str(tmp_path / "cal.png"))
    axes = drawn[0].axes  # the three panels, then the first one's right axis
    lines = {ln.get_label(): (axes.index(ax), list(ln.get_xdata()), list(ln.get_ydata()))
             for ax in axes for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    a0, xs = cal.alphas[0], list(range(len(cal.schedule)))
    assert lines == {
        "PSNR to final (dB, shown <= 60)": (0, xs, [min(v, 60.0) for v in cal.psnr_to_final]),
        "SSIM to final (right axis)": (3, xs, list(cal.ssim_to_final)),
        f"feature distance ({cal.feature_name})": (1, xs, list(cal.feature_dist_to_final)),
        "KL(cond || uncond)": (1, xs, list(cal.kl_cond_uncond)),
        **{f"alpha={a}": (2, xs, [sum(u[i] for u in s) / len(s) for s in cal.rank_ratio_mean])
           for i, a in enumerate(cal.alphas)},
    }
    assert axes[3].get_position().bounds == axes[0].get_position().bounds  # the twin of the first panel
    legends = {t.get_text() for ax in drawn[0].axes if ax.get_legend() for t in ax.get_legend().get_texts()}
    assert legends == set(lines)
    start = cal.recommend(alpha=a0).refine_start
    dotted = [ln for ax in drawn[0].axes for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert len(dotted) == 3 and all(list(ln.get_xdata()) == [start - 0.5] * 2 for ln in dotted)


def test_a_calibration_file_cut_short_or_edited_is_named(tmp_path, tiny):
    import json

    cal = calibrate(tiny, [0, 1], one_branch_sweep=False, cfg=3.0)
    path = tmp_path / "c.json"
    cal.save(path)
    assert Calibration.load(path) == cal
    text = path.read_text()
    cases = {"cut": text[:len(text) // 2], "not utf-8": b"\xff\xfe".decode("latin-1"), "deep": "[" * 100000}
    for what, body in cases.items():
        path.write_text(body, encoding="latin-1")
        with pytest.raises(ValueError, match=r"c.json is not a stagevar calibration \("):
            Calibration.load(path)
    data = json.loads(text)
    del data["alphas"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"c.json is not a complete stagevar calibration \(missing \['alphas'\]\)"):
        Calibration.load(path)
    data = json.loads(text)
    data["psnr_to_final"] = data["psnr_to_final"][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"'psnr_to_final' must be a list with one entry per scale \(4\)"):
        Calibration.load(path)


def test_recommended_ratios_are_of_M_and_the_stage_boundary_is_the_scale_after_convergence(small):
    """By hand, on planted measurements: ranks measured as ratios of min(M, C) become ratios of M
    (the same ranks); the refinement stage starts right after the first scale from which every
    later partial image is within all three thresholds."""
    cal = calibrate(small, [0, 1], seeds=[0], one_branch_sweep=False, unit_blocks=len(small.blocks))
    K = len(cal.schedule)
    assert cal.width == small.C
    sides = [h for _, h, _ in cal.schedule]
    planted = [[[0.25] * len(cal.alphas)] for _ in range(K)]
    psnr = [10.0] * (K - 3) + [30.0, 20.0, 100.0]  # scale K-3 passes, K-2 fails: converged only at K-1
    ssim, feat = [0.9] * K, [0.0] * K
    c = dataclasses.replace(cal, rank_ratio_mean=planted, psnr_to_final=psnr, ssim_to_final=ssim,
                            feature_dist_to_final=feat, width=4)
    assert c.converged_scale() == K - 1
    assert c.recommend(max_rank_ratio=None).refine_start == K - 1  # never before the last: the last only
    psnr[K - 2] = 26.0  # now K-3 onwards all pass
    c = dataclasses.replace(c, psnr_to_final=psnr)
    assert c.converged_scale() == K - 3
    on_the_line = dataclasses.replace(c, feature_dist_to_final=[0.02] * K)  # each threshold is inclusive
    assert on_the_line.converged_scale() == on_the_line.converged_scale(max_feature_dist=0.03) == K - 3
    assert on_the_line.converged_scale(max_feature_dist=0.0199) is None
    psnr_on_the_line = [25.0 if v == 26.0 else v for v in psnr]
    assert dataclasses.replace(c, psnr_to_final=psnr_on_the_line).converged_scale() == K - 3
    assert dataclasses.replace(c, ssim_to_final=[0.8] * K).converged_scale() == K - 3
    cfg = c.recommend(max_rank_ratio=None)
    assert cfg.refine_start == K - 2 and sorted(cfg.rank_table) == [K - 2, K - 1]
    for si in (K - 2, K - 1):
        M = sides[si] ** 2
        assert list(cfg.rank_table[si][0.96]) == [0.25 * min(M, 4) / M]  # rank 0.25 * 4 = 1 token of M
    feat[K - 3] = 0.5  # the feature distance fails at K-3: converged from K-2
    c = dataclasses.replace(c, feature_dist_to_final=feat)
    assert c.recommend(max_rank_ratio=None).refine_start == K - 1
    old = dataclasses.replace(c, width=None)  # a file without the width: ratios kept (C >= M assumed)
    assert list(old.recommend(max_rank_ratio=None).rank_table[K - 1][0.96]) == [0.25]


def test_calibration_files_read_utf16_json_and_errors_name_the_parse_error(small, tmp_path):
    """``read_json`` reads bytes (json detects UTF-8, -16, -32 itself) and names what failed."""
    cal = calibrate(small, [0], seeds=[0], one_branch_sweep=False, unit_blocks=len(small.blocks))
    path = tmp_path / "cal16.json"
    path.write_text(json.dumps(cal.to_dict()), encoding="utf-16")
    assert Calibration.load(path) == cal
    bad = tmp_path / "cut.json"
    bad.write_text(json.dumps(cal.to_dict())[:50])
    with pytest.raises(ValueError, match=r"cut.json is not a stagevar calibration \(JSONDecodeError: "):
        Calibration.load(bad)
    header = str(cal).splitlines()[1].split()
    assert header == ["scale", "h", "x", "w", "PSNR", "SSIM", "feat", "KL", "c|u", "1-br", "PSNR", "rank@0.96"]
