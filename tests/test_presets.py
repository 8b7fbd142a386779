"""stagevar.presets: the one namespace of named configs; every preset deeply frozen."""
import dataclasses

import pytest

import stagevar
from stagevar import ConfigError, StageVARConfig
from stagevar.models import reference_infinity, reference_var
from stagevar.plan import resolve_plan

VAR256 = [(p, p) for p in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)]
NAMES = stagevar.preset_names()
MODEL = reference_var("tiny")  # what the relative names (cfg-only, lowrank-only) are taken against


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


def test_presets():
    names = NAMES
    for n in ["none", "var-d16", "var-d20", "var-d24", "var-d30", "var-d36", "infinity-2b", "infinity-8b",
              "infinity-2b-paper", "infinity-8b-paper"]:
        assert n in names
    for n in names:  # never skip in a default; only the authors' released Infinity behaviour does (not HART's)
        assert (stagevar.preset(n, MODEL).skip != ()) == (n.startswith("infinity-") and n.endswith("-paper"))
    with pytest.raises(ConfigError, match="unknown config 'var-d99'; did you mean 'var-d.*names: .*fastvar.*skip-last-N"):
        stagevar.preset("var-d99")
    with pytest.raises(ConfigError, match="a config name must be a string .*'var-d16'"):
        stagevar.preset(None)
    with pytest.raises(ConfigError, match="a config name must be a string"):
        stagevar.preset(["var-d16"])


def test_an_unknown_name_hears_its_close_matches_and_every_name():
    """The refusals' words, whole: the close matches (three at most, joined by 'or'), the list of names,
    the hint for a file name, the word for 'baseline' and for a value that is not a string."""
    from stagevar.presets import PATTERNS

    names = ", ".join(NAMES + [p + "N" for p in PATTERNS])
    with pytest.raises(ConfigError) as e:
        stagevar.preset("skip-lst-2")
    assert str(e.value) == f"unknown config 'skip-lst-2'; did you mean 'skip-last-2'? names: {names}."
    with pytest.raises(ConfigError) as e:
        stagevar.preset("infinity")  # four names are close: three are offered
    close = str(e.value).split("did you mean ")[1].split("? names:")[0].split(" or ")
    assert len(close) == 3 and all(c.strip("'").startswith("infinity-") for c in close)
    with pytest.raises(ConfigError) as e:
        stagevar.preset("qqqqqqqq.json")
    assert str(e.value) == (f"unknown config 'qqqqqqqq.json'; names: {names}. "
                            "To load a config file, pass stagevar.StageVARConfig.load(path).")
    with pytest.raises(ConfigError) as e:
        stagevar.preset("baseline")
    assert str(e.value) == ("'baseline' is the model's own unpatched call, not a config: generate without "
                            "stagevar.accelerate (or call stagevar.restore(model))")
    with pytest.raises(ConfigError, match="must be a string .*, got int$"):
        stagevar.preset(16)


def test_every_name_resolves_and_relative_names_need_the_model():
    small, inf = reference_var("small"), reference_infinity("tiny").model
    for name in NAMES:
        assert isinstance(stagevar.preset(name, small), StageVARConfig)
    assert stagevar.preset("cfg-only", small) == stagevar.preset("var-d16").replace(rank_ratios={}, name="cfg-only")
    assert stagevar.preset("lowrank-only", inf) == stagevar.preset("infinity-2b").replace(branch="both",
                                                                                         name="lowrank-only")
    with pytest.raises(ConfigError, match=r"'cfg-only' is taken from a model's family preset: pass the model, "
                                          r"stagevar.preset\('cfg-only', model\)"):
        stagevar.preset("cfg-only")
    for name, want in (("skip-last-3", dict(skip=(-3, -2, -1), refine_start=None)),
                       ("uncond-last-2", dict(branch="uncond", refine_start=-2)),
                       ("cond-last-1", dict(branch="cond", refine_start=-1))):
        cfg = stagevar.preset(name)
        assert all(getattr(cfg, k) == v for k, v in want.items()) and cfg.name == name
    for bad in ("skip-last-0", "skip-last-x", "cond-last--1"):
        with pytest.raises(ConfigError, match="N >= 1"):
            stagevar.preset(bad)


def test_the_tools_compare_a_family_preset_with_its_relatives_then_the_ablations():
    from stagevar.presets import compared

    assert compared("infinity-2b") == ["infinity-2b", "infinity-2b-paper", "cfg-only", "lowrank-only", "fastvar",
                                       "skip-last-2"]
    assert compared("var-d16", carried="stagevar-tiny-var")[:2] == ["var-d16", "stagevar-tiny-var"]
    assert compared("var-d16", carried="var-d16").count("var-d16") == 1
    for name in compared("star-d30"):
        stagevar.preset(name, reference_var("tiny"))


def test_preset_contents_are_pinned():
    """What each family preset says, field by field (a mutated preset runs, so only this catches it)."""
    for depth in (16, 20, 24, 30, 36):
        v = stagevar.preset(f"var-d{depth}")
        assert (v.refine_start, v.branch, v.unit_blocks, v.reducer, dict(v.rank_ratios), v.name) == \
            (-2, "uncond", 1, "gaussian", {-2: 0.16, -1: 0.05}, f"var-d{depth}")
    for name in ("infinity-2b", "infinity-8b"):
        c = stagevar.preset(name)
        assert (c.refine_start, c.branch, c.alpha, c.reducer, c.resample_units, c.skip, c.name) == \
            (-3, "uncond", 0.96, "gaussian", True, (), name)
        assert sorted(c.rank_table) == [-3, -2, -1] and all(list(t) == [0.96] for t in c.rank_table.values())
        p = stagevar.preset(name + "-paper")
        assert (p.refine_start, p.alpha, p.resample_units, p.skip, sorted(p.rank_table), p.name) == \
            (-3, 0.96, True, (-2, -1), [-3], name + "-paper")
    for name, blocks in (("star-d30", 30), ("star-d16", 30), ("hart-0.7b-paper", 24), ("hart-0.7b", 2)):
        c = stagevar.preset(name)
        assert (c.refine_start, c.branch, c.unit_blocks, c.reducer, c.resample_units, sorted(c.rank_ratios), c.name) \
            == (-2, "uncond", 1, "gaussian", True, [-1], name)
        assert len(c.rank_ratios[-1]) == blocks
    assert stagevar.preset("hart-0.7b-paper").rank_ratios[-1][0] == pytest.approx(0.018744562601806715 * 1536 / 4096)
    f = stagevar.preset("fastvar-hart")
    assert (f.refine_start, f.branch, dict(f.rank_ratios), f.reducer, f.reduce_blocks) == \
        (-2, "both", {-2: 0.5, -1: 0.25}, "fastvar", None)
