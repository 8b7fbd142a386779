"""StageVARConfig validation, JSON, immutability, presets and plan resolution."""
import copy
import dataclasses
import json
import math
import pickle
import warnings

import pytest
import torch

import stagevar
from stagevar import ConfigError, StageVARConfig
from stagevar.models import reference_var
from stagevar.plan import NoAccelerationWarning, resolve_plan

VAR256 = [(p, p) for p in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)]
NAMES = stagevar.preset_names()
MODEL = reference_var("tiny")  # what the relative names (cfg-only, lowrank-only) are taken against


@pytest.mark.parametrize("kwargs, match", [
    (dict(branch="neg"), "branch='neg' is not one of"),
    (dict(reducer="svd"), "reducer='svd'"),
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
    # type holes: each names the field and says what to give instead
    (dict(rank_ratio=[[0.1, 0.2]]), r"rank_ratio\[0\]: a list inside a list .* give one float per unit"),
    (dict(rank_ratio=[0.1, "0.2"]), r"rank_ratio\[1\]: expected a float .* without quotes"),
    (dict(rank_ratio=math.nan), r"rank_ratio: rank ratio nan is outside \(0, 1\]"),
    (dict(rank_ratio=math.inf), r"rank_ratio: rank ratio inf is outside"),
    (dict(rank_ratio=True), "rank_ratio: expected a float"),
    (dict(rank_ratio={0: 0.1}), "rank_ratio: expected a float"),
    (dict(refine_start=True), "refine_start must be an integer scale index"),
    (dict(refine_start="-2"), "refine_start must be an integer scale index"),
    (dict(branch=None), "branch=None is not one of"),
    (dict(reducer=b"gaussian"), "reducer=b'gaussian' is not one of"),
    (dict(rank_ratios=[(-1, 0.1)]), r"rank_ratios must be a dict \{scale_index"),
    (dict(rank_ratios=None), "rank_ratios must be a dict"),
    (dict(rank_ratios={-1: "0.1"}), r"rank_ratios\[-1\]: expected a float"),
    (dict(rank_ratios={True: 0.1}), "rank_ratios: scale key True .* not an integer scale index"),
    (dict(rank_ratios={b"-1": 0.1}), "rank_ratios: scale key b'-1' .* not an integer scale index"),
    (dict(rank_ratios={"-1": 0.1, -1: 0.2}), "rank_ratios: keys '-1' and -1 both name -1"),
    (dict(rank_table={-1: [0.1]}, alpha=0.96), r"rank_table\[-1\] must be a non-empty dict"),
    (dict(rank_table={-1: {}}, alpha=0.96), r"rank_table\[-1\] must be a non-empty dict"),
    (dict(rank_table={-1: {"x": [0.1]}}, alpha=0.96), r"rank_table\[-1\]: alpha key 'x' .* not a number in \(0, 1\)"),
    (dict(rank_table={-1: {True: [0.1]}}, alpha=0.96), "alpha key True"),
    (dict(rank_table={-1: {"nan": [0.1]}}, alpha=0.96), "alpha key 'nan'"),
    (dict(rank_table={-1: {1.5: [0.1]}}, alpha=0.96), "alpha key 1.5"),
    (dict(rank_table={-1: {0.96: [[0.1]]}}, alpha=0.96), r"rank_table\[-1\]\[0.96\]\[0\]: a list inside a list"),
    (dict(rank_table={-1: {0.96: [0.1], "0.96": [0.2]}}, alpha=0.96), r"rank_table\[-1\]: keys 0.96 and '0.96' both"),
    (dict(alpha="0.96", rank_table={-1: {0.96: [0.1]}}), r"alpha must be an energy level in \(0, 1\)"),
    (dict(alpha=math.nan, rank_table={-1: {0.96: [0.1]}}), "alpha must be an energy level"),
    (dict(alpha=True, rank_table={-1: {0.96: [0.1]}}), "alpha must be an energy level"),
    (dict(unit_blocks=2.0), "unit_blocks must be a positive integer"),
    (dict(unit_blocks=True), "unit_blocks must be a positive integer"),
    (dict(unit_blocks="2"), "unit_blocks must be a positive integer"),
    (dict(resample_units=1), "resample_units must be True or False"),
    (dict(skip="12"), r"skip must be a list of integer scale indices, e.g. \[-2, -1\]"),
    (dict(skip=b"12"), "skip must be a list of integer scale indices"),
    (dict(skip=None), r"skip must be a list .*\[\] to skip nothing"),
    (dict(skip={-1: True}), "skip must be a list"),
    (dict(skip=1.0), "skip must be a list"),
    (dict(skip=[[-1]]), r"skip: entry \[-1\] .* not an integer scale index"),
    (dict(skip=["-1"]), "skip: entry '-1' .* not an integer scale index"),
    (dict(skip=[True]), "skip: entry True"),
    (dict(skip=[math.nan]), "skip: entry nan"),
    (dict(seed=1.5), "seed must be an integer"),
    (dict(seed=True), "seed must be an integer"),
    (dict(seed=None), "seed must be an integer"),
    (dict(name=None), "name must be a string"),
    (dict(name=b"mine"), "name must be a string"),
])
def test_bad_configs_say_what_to_change(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        StageVARConfig(**kwargs)


def test_json_round_trip(tmp_path):
    cfg = StageVARConfig(refine_start=-3, branch="cond", rank_ratio=[0.1, 0.2], rank_ratios={-1: 0.05},
                         rank_table={-2: {0.96: [0.3, 0.4], 0.99: [0.5, 0.6]}}, alpha=0.96, unit_blocks=2,
                         reducer="orthogonal", skip=[-1], seed=7, name="mine")
    assert StageVARConfig.from_json(cfg.to_json()) == cfg
    json.loads(cfg.to_json())
    path = tmp_path / "c.json"
    cfg.save(path)
    assert StageVARConfig.load(path) == cfg
    for name in NAMES:
        p = stagevar.preset(name, MODEL)
        assert StageVARConfig.from_json(p.to_json()) == p


def test_format_1_files_still_load_and_name_their_reducer():
    # what stagevar wrote before the reducer field: no "format", projection + selection
    old = {"refine_start": -2, "branch": "both", "rank_ratios": {"-1": 0.5}, "unit_blocks": 1,
           "projection": "sample", "selection": "mean_distance", "name": "old-fastvar"}
    assert StageVARConfig.from_dict(old).reducer == "fastvar"
    assert StageVARConfig.from_dict(dict(old, selection="norm")).reducer == "sample"
    assert StageVARConfig.from_dict({"projection": "orthogonal"}).reducer == "orthogonal"
    assert StageVARConfig.from_dict({"name": "x"}) == StageVARConfig(name="x")
    with pytest.raises(ConfigError, match="no reducer combines them; use reducer='fastvar'"):
        StageVARConfig.from_dict({"projection": "gaussian", "selection": "mean_distance"})
    with pytest.raises(ConfigError, match="config format 3 is not one this stagevar reads"):
        StageVARConfig.from_dict({"format": 3})
    with pytest.raises(ConfigError, match="unknown StageVARConfig field"):  # format 2 has no projection
        StageVARConfig.from_dict({"format": 2, "projection": "sample"})


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="unknown StageVARConfig field"):
        StageVARConfig.from_dict({"refine_strat": -2})
    with pytest.raises(ConfigError, match=r"unknown StageVARConfig field\(s\) 'x', 1;"):
        StageVARConfig.from_dict({1: 2, "x": 3})  # keys of mixed types are still named
    with pytest.raises(ConfigError, match="not valid JSON"):
        StageVARConfig.from_json("{")
    with pytest.raises(ConfigError, match="from_json takes JSON text"):
        StageVARConfig.from_json({"refine_start": -2})
    with pytest.raises(ConfigError, match="unknown StageVARConfig.replace field"):
        StageVARConfig().replace(refine_strat=-1)


def test_json_skip_as_a_string_is_refused_not_split_into_digits():
    with pytest.raises(ConfigError, match="skip must be a list of integer scale indices"):
        StageVARConfig.from_json('{"refine_start": null, "skip": "12"}')
    assert StageVARConfig.from_json('{"refine_start": null, "skip": [12]}').skip == (12,)


def test_to_dict_layout_is_plain_json_data():
    d = stagevar.preset("infinity-2b-paper").to_dict()
    assert d == {"refine_start": -3, "branch": "uncond", "rank_ratio": None, "rank_ratios": {},
                 "rank_table": {"-3": {"0.96": [.0168, .1365, .2104, .2503, .2559, .1979, .1570, .1909]}},
                 "alpha": 0.96, "unit_blocks": None, "resample_units": True, "reducer": "gaussian",
                 "reduce_blocks": None, "skip": [-2, -1], "cache_condition": True, "seed": 0, "name": "infinity-2b-paper",
                 "format": 2}
    assert type(d["rank_table"]) is dict and type(d["rank_table"]["-3"]) is dict  # plain, mutable copies
    d["rank_table"]["-3"]["0.96"][0] = 0.5
    assert stagevar.preset("infinity-2b-paper").rank_table[-3][0.96][0] == .0168


@pytest.mark.parametrize("mutate", [
    lambda c: c.rank_ratios.__setitem__(-1, -3.0),
    lambda c: c.rank_ratios.__delitem__(-1),
    lambda c: c.rank_ratios.update({-1: 0.5}),
    lambda c: c.rank_ratios.setdefault(-3, 0.5),
    lambda c: c.rank_ratios.pop(-1),
    lambda c: c.rank_ratios.popitem(),
    lambda c: c.rank_ratios.clear(),
    lambda c: c.rank_ratios.__ior__({-1: 0.5}),
    lambda c: c.rank_ratios.__init__({-1: 0.5}),
])
def test_preset_mappings_refuse_mutation(mutate):
    before = stagevar.preset("var-d16").to_json()
    with pytest.raises(TypeError, match=r"read-only.*cfg.replace\(rank_ratios="):
        mutate(stagevar.preset("var-d16"))
    after = stagevar.preset("var-d16")
    assert after.to_json() == before and after.rank_ratios == {-2: 0.16, -1: 0.05}
    assert resolve_plan(after, VAR256, units=16)[-1].ranks == (int(0.05 * 256) + 1,) * 16


def test_every_preset_is_deeply_frozen():
    for name in NAMES:
        cfg = stagevar.preset(name, MODEL)
        before = cfg.to_json()
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.refine_start = 0
        for row in cfg.rank_table.values():
            with pytest.raises(TypeError, match="read-only"):
                row[0.5] = (0.1,)
            assert all(isinstance(v, tuple) for v in row.values())
        with pytest.raises(TypeError, match="read-only"):
            cfg.rank_table[-1] = {0.96: (0.5,)}
        assert isinstance(cfg.skip, tuple) and not isinstance(cfg.rank_ratio, list)
        assert stagevar.preset(name, MODEL).to_json() == before and stagevar.preset(name, MODEL) == cfg


def test_mutable_inputs_are_copied_in():
    ratios, per_unit = {-1: [0.1, 0.2]}, [0.3, 0.4]
    cfg = StageVARConfig(rank_ratio=per_unit, rank_ratios=ratios)
    ratios[-1].append(0.9)
    ratios[-2] = 0.5
    per_unit[0] = 1.0
    assert cfg.rank_ratios == {-1: (0.1, 0.2)} and cfg.rank_ratio == (0.3, 0.4)


def test_equal_configs_hash_equal_and_work_as_dict_keys():
    a = StageVARConfig(refine_start=-3, rank_ratio=[0.1, 0.2], rank_ratios={-1: 0.05, -2: [0.3, 0.4]},
                       rank_table={-3: {0.96: [0.1], 0.99: [0.2]}}, alpha=0.96, skip=[-1, 0, 0])
    # the same config spelled differently: key order, JSON-style string keys, tuples, a set
    b = StageVARConfig(refine_start=-3, rank_ratio=(0.1, 0.2), rank_ratios={"-2": (0.3, 0.4), "-1": 0.05},
                       rank_table={"-3": {"0.99": (0.2,), "0.96": 0.1}}, alpha=0.96, skip={0, -1})
    assert a == b and hash(a) == hash(b)
    assert hash(StageVARConfig.from_json(a.to_json())) == hash(a)
    cache = {a: "graph"}
    assert cache[b] == "graph" and cache.get(a.replace(seed=1)) is None
    assert len({stagevar.preset(n, MODEL) for n in NAMES} | {stagevar.preset("var-d16")}) == len(NAMES)
    assert stagevar.preset("var-d16") != stagevar.preset("var-d20")  # names differ


def test_replace_copy_and_pickle_keep_configs_frozen_and_equal():
    cfg = stagevar.preset("infinity-2b")
    for other in (copy.copy(cfg), copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg)), dataclasses.replace(cfg)):
        assert other == cfg and hash(other) == hash(cfg)
        with pytest.raises(TypeError, match="read-only"):
            other.rank_table[-1][0.5] = (0.1,)
    tighter = dataclasses.replace(cfg, rank_table={**cfg.rank_table, -1: {0.96: [0.01] * 8}})
    assert tighter.rank_table[-1][0.96] == (0.01,) * 8 and cfg.rank_table[-1][0.96][0] == .0082
    with pytest.raises(ConfigError, match="rank_ratio: rank ratio 2.0 is outside"):
        dataclasses.replace(cfg, rank_ratio=2.0)  # replace validates again
    editable = cfg.rank_table.copy()
    editable[-1] = {0.96: (0.5,)}  # copy() is a plain dict
    assert type(editable) is dict and cfg.rank_table[-1] != editable[-1]


def test_presets():
    names = NAMES
    for n in ["none", "var-d16", "var-d20", "var-d24", "var-d30", "var-d36", "infinity-2b", "infinity-8b",
              "infinity-2b-paper", "infinity-8b-paper"]:
        assert n in names
    for n in names:  # never skip in a default; only the presets named after the authors' code do
        assert (stagevar.preset(n, MODEL).skip != ()) == n.endswith("-paper")
    with pytest.raises(ConfigError, match="unknown config 'var-d99'; did you mean 'var-d.*names: .*fastvar.*skip-last-N"):
        stagevar.preset("var-d99")
    with pytest.raises(ConfigError, match="a config name must be a string .*'var-d16'"):
        stagevar.preset(None)
    with pytest.raises(ConfigError, match="a config name must be a string"):
        stagevar.preset(["var-d16"])


def test_plan_resolves_by_position_not_side():
    cfg = stagevar.preset("var-d16")
    p256 = resolve_plan(cfg, VAR256, units=16)
    p512 = resolve_plan(cfg, [(p, p) for p in (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)], units=16)
    for plans in (p256, p512):
        assert [p.mode for p in plans[-2:]] == ["uncond-only+low-rank"] * 2
        assert all(p.mode == "intact" for p in plans[:-2])
    assert p256[-1].ranks == (int(0.05 * 256) + 1,) * 16
    assert p512[-1].ranks == (int(0.05 * 1024) + 1,) * 16


def test_plan_rank_sources_and_precedence():
    cfg = StageVARConfig(refine_start=-3, rank_ratio=0.5, rank_ratios={-1: [0.1, 0.2]},
                         rank_table={-2: {0.96: [0.25, 0.25]}}, alpha=0.96)
    plans = resolve_plan(cfg, VAR256, units=2)
    assert plans[-3].ranks == (51, 51)        # rank_ratio: int(0.5*100)+1
    assert plans[-2].ranks == (43, 43)        # table: int(0.25*169)+1
    assert plans[-1].ranks == (26, 52)        # per-unit override
    with pytest.raises(ConfigError, match="3 per-unit ratios given but the model has 2"):
        resolve_plan(StageVARConfig(rank_ratio=[0.1, 0.1, 0.1]), VAR256, units=2)


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
    want = var.autoregressive_infer_cfg(B=1, label_B=1, g_seed=0)
    with pytest.raises(ConfigError, match="outside this model's schedule of 4 scales"):
        stagevar.accelerate(var, StageVARConfig(refine_start=-7))
    with pytest.raises(ConfigError, match="unit_blocks=5 exceeds the model's 2 blocks"):
        stagevar.accelerate(var, StageVARConfig(unit_blocks=5))
    with pytest.raises(ConfigError, match="must be a StageVARConfig"):
        stagevar.accelerate(var, 3)
    assert not stagevar.is_accelerated(var) and "autoregressive_infer_cfg" not in var.__dict__
    assert torch.equal(var.autoregressive_infer_cfg(B=1, label_B=1, g_seed=0), want)  # exactly as before


def test_unsupported_objects_are_named():
    import torch.nn as nn
    with pytest.raises(stagevar.UnsupportedModelError, match="expects a loaded torch.nn.Module"):
        stagevar.accelerate("var-d16")
    with pytest.raises(stagevar.UnsupportedModelError, match=r"Linear is not a model stagevar supports.*missing patch_nums"):
        stagevar.accelerate(nn.Linear(2, 2))


def test_resample_units_rule():
    from stagevar.plan import ratios_for_units
    assert ratios_for_units((0.1, 0.3), 3, "x", resample=True) == pytest.approx([0.1, 0.2, 0.3])
    assert ratios_for_units((0.1, 0.2, 0.3, 0.4, 0.5), 2, "x", resample=True) == pytest.approx([0.1, 0.5])
    assert ratios_for_units((0.2, 0.4), 1, "x", resample=True) == pytest.approx([0.3])
    assert ratios_for_units((0.1, 0.2), 2, "x", resample=True) == [0.1, 0.2]
    inf = stagevar.preset("infinity-2b")
    plans = resolve_plan(inf, [(1, 1), (2, 2), (4, 4), (8, 8)], units=2)
    assert plans[-1].ranks == (int(0.0082 * 64) + 1, int(0.0557 * 64) + 1)
    assert [p.mode for p in plans] == ["intact"] + ["uncond-only+low-rank"] * 3
    paper = resolve_plan(stagevar.preset("infinity-2b-paper"), [(1, 1), (2, 2), (4, 4), (8, 8)], units=8)
    assert [p.mode for p in paper] == ["intact", "uncond-only+low-rank", "skip", "skip"]


def test_scale_keys_must_be_integral():
    with pytest.raises(ConfigError, match="not an integer scale index"):
        StageVARConfig(refine_start=None, skip=(2.9,))
    with pytest.raises(ConfigError, match="not an integer scale index"):
        StageVARConfig(rank_ratios={-1.7: 0.1})
    assert StageVARConfig(refine_start=None, skip=(2.0,)).skip == (2,)
    assert StageVARConfig(refine_start=None, skip=-1).skip == (-1,)  # one index alone is a list of one
    assert StageVARConfig(rank_ratios={"-1": 0.1}).rank_ratios == {-1: 0.1}  # JSON object keys are text
