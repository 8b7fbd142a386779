"""StageVARConfig validation, JSON, presets and plan resolution."""
import json
import warnings

import pytest

import stagevar
from stagevar import ConfigError, StageVARConfig
from stagevar.models import reference_var
from stagevar.plan import NoAccelerationWarning, resolve_plan

VAR256 = [(p, p) for p in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)]


@pytest.mark.parametrize("kwargs, match", [
    (dict(branch="neg"), "branch='neg' is not one of"),
    (dict(projection="svd"), "projection='svd'"),
    (dict(rank_ratio=0.0), r"outside \(0, 1\]"),
    (dict(rank_ratio=1.5), r"outside \(0, 1\]"),
    (dict(rank_ratio=[]), "empty list"),
    (dict(rank_ratio="0.2"), "expected a float"),
    (dict(rank_ratios={"x": 0.2}), "not an integer scale index"),
    (dict(rank_table={-1: {0.96: [0.1]}}), "set alpha"),
    (dict(alpha=0.96), "rank_table is empty"),
    (dict(alpha=0.9, rank_table={-1: {0.96: [0.1]}}), "no entry in rank_table"),
    (dict(alpha=1.5, rank_table={-1: {0.96: [0.1]}}), r"in \(0, 1\)"),
    (dict(unit_blocks=0), "positive integer"),
    (dict(refine_start=1.5), "integer scale index"),
    (dict(refine_start=None, rank_ratio=0.2), "refine_start is None"),
    (dict(seed="x"), "seed must be an integer"),
    (dict(cache_condition="yes"), "True or False"),
])
def test_bad_configs_say_what_to_change(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        StageVARConfig(**kwargs)


def test_json_round_trip(tmp_path):
    cfg = StageVARConfig(refine_start=-3, branch="cond", rank_ratio=[0.1, 0.2], rank_ratios={-1: 0.05},
                         rank_table={-2: {0.96: [0.3, 0.4], 0.99: [0.5, 0.6]}}, alpha=0.96, unit_blocks=2,
                         projection="orthogonal", skip=[-1], seed=7, name="mine")
    assert StageVARConfig.from_json(cfg.to_json()) == cfg
    json.loads(cfg.to_json())
    path = tmp_path / "c.json"
    cfg.save(path)
    assert StageVARConfig.load(path) == cfg
    for name in stagevar.presets():
        p = stagevar.preset(name)
        assert StageVARConfig.from_json(p.to_json()) == p


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="unknown StageVARConfig field"):
        StageVARConfig.from_dict({"refine_strat": -2})
    with pytest.raises(ConfigError, match="not valid JSON"):
        StageVARConfig.from_json("{")


def test_presets():
    names = stagevar.presets()
    for n in ["none", "var-d16", "var-d20", "var-d24", "var-d30", "var-d36", "infinity-2b", "infinity-8b",
              "infinity-2b-paper"]:
        assert n in names
    for n in names:  # never skip in a default; only the preset named after the authors' code does
        assert (stagevar.preset(n).skip != ()) == (n == "infinity-2b-paper")
    with pytest.raises(ConfigError, match="unknown preset 'var-d99'; available"):
        stagevar.preset("var-d99")


def test_plan_resolves_by_position_not_side():
    cfg = stagevar.preset("var-d16")
    p256 = resolve_plan(cfg, VAR256, num_units=16)
    p512 = resolve_plan(cfg, [(p, p) for p in (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)], num_units=16)
    for plans in (p256, p512):
        assert [p.mode for p in plans[-2:]] == ["uncond-only+low-rank"] * 2
        assert all(p.mode == "intact" for p in plans[:-2])
    assert p256[-1].ranks == (int(0.05 * 256) + 1,) * 16
    assert p512[-1].ranks == (int(0.05 * 1024) + 1,) * 16


def test_plan_rank_sources_and_precedence():
    cfg = StageVARConfig(refine_start=-3, rank_ratio=0.5, rank_ratios={-1: [0.1, 0.2]},
                         rank_table={-2: {0.96: [0.25, 0.25]}}, alpha=0.96)
    plans = resolve_plan(cfg, VAR256, num_units=2)
    assert plans[-3].ranks == (51, 51)        # rank_ratio: int(0.5*100)+1
    assert plans[-2].ranks == (43, 43)        # table: int(0.25*169)+1
    assert plans[-1].ranks == (26, 52)        # per-unit override
    with pytest.raises(ConfigError, match="3 per-unit ratios given but the model has 2"):
        resolve_plan(StageVARConfig(rank_ratio=[0.1, 0.1, 0.1]), VAR256, num_units=2)


def test_plan_errors_name_the_range():
    with pytest.raises(ConfigError, match=r"valid: -10..9"):
        resolve_plan(StageVARConfig(refine_start=-11), VAR256, 1)
    with pytest.raises(ConfigError, match="first scale"):
        resolve_plan(StageVARConfig(refine_start=0), VAR256, 1)
    with pytest.raises(ConfigError, match="before the refinement stage"):
        resolve_plan(StageVARConfig(refine_start=-1, rank_ratios={-2: 0.1}), VAR256, 1)
    with pytest.raises(ConfigError, match="skips every scale"):
        resolve_plan(StageVARConfig(refine_start=None, skip=list(range(10))), VAR256, 1)


def test_config_that_accelerates_nothing_says_so():
    with pytest.warns(NoAccelerationWarning, match="accelerates no scale"):
        resolve_plan(StageVARConfig(refine_start=-2, branch="both"), VAR256, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_plan(stagevar.preset("none"), VAR256, 1)  # "none" is silent by design


def test_accelerate_rejects_bad_input_and_leaves_model_usable():
    var = reference_var("tiny")
    with pytest.raises(ConfigError, match="outside this model's schedule of 4 scales"):
        stagevar.accelerate(var, StageVARConfig(refine_start=-7))
    with pytest.raises(ConfigError, match="unit_blocks=5 exceeds the model's 2 blocks"):
        stagevar.accelerate(var, StageVARConfig(unit_blocks=5))
    with pytest.raises(ConfigError, match="must be a StageVARConfig"):
        stagevar.accelerate(var, 3)
    assert not stagevar.is_accelerated(var)
    var.autoregressive_infer_cfg(B=1, label_B=1, g_seed=0)


def test_unsupported_objects_are_named():
    import torch.nn as nn
    with pytest.raises(stagevar.UnsupportedModelError, match="expects a loaded torch.nn.Module"):
        stagevar.accelerate("var-d16")
    with pytest.raises(stagevar.UnsupportedModelError, match=r"Linear is not a model stagevar supports.*missing patch_nums"):
        stagevar.accelerate(nn.Linear(2, 2))


def test_resample_units_rule():
    from stagevar.config import ratios_for_units
    assert ratios_for_units((0.1, 0.3), 3, "x", resample=True) == pytest.approx([0.1, 0.2, 0.3])
    assert ratios_for_units((0.1, 0.2, 0.3, 0.4, 0.5), 2, "x", resample=True) == pytest.approx([0.1, 0.5])
    assert ratios_for_units((0.2, 0.4), 1, "x", resample=True) == pytest.approx([0.3])
    assert ratios_for_units((0.1, 0.2), 2, "x", resample=True) == [0.1, 0.2]
    inf = stagevar.preset("infinity-2b")
    plans = resolve_plan(inf, [(1, 1), (2, 2), (4, 4), (8, 8)], num_units=2)
    assert plans[-1].ranks == (int(0.0082 * 64) + 1, int(0.0557 * 64) + 1)
    assert [p.mode for p in plans] == ["intact"] + ["uncond-only+low-rank"] * 3
    paper = resolve_plan(stagevar.preset("infinity-2b-paper"), [(1, 1), (2, 2), (4, 4), (8, 8)], num_units=8)
    assert [p.mode for p in paper] == ["intact", "uncond-only+low-rank", "skip", "skip"]


def test_scale_keys_must_be_integral():
    with pytest.raises(ConfigError, match="not an integer scale index"):
        StageVARConfig(refine_start=None, skip=(2.9,))
    with pytest.raises(ConfigError, match="not an integer scale index"):
        StageVARConfig(rank_ratios={-1.7: 0.1})
    assert StageVARConfig(refine_start=None, skip=(2.0,)).skip == (2,)
