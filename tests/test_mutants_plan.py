"""stagevar.plan: behaviours the mutation run (TESTING.md) found untested."""
import warnings

import pytest

import stagevar
from stagevar.config import ConfigError, StageVARConfig
from stagevar.plan import NoAccelerationWarning, ScalePlan, describe, resolve_plan

SCHEDULE = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6)]


def silent(cfg, schedule=SCHEDULE, units=2):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return resolve_plan(cfg, schedule, units)


def refused(cfg, schedule=SCHEDULE, units=2):
    with pytest.raises(ConfigError) as e:
        resolve_plan(cfg, schedule, units, warn=False)
    return str(e.value)


def test_every_scale_gets_its_index_and_size():
    cfg = StageVARConfig(refine_start=-2, rank_ratio=0.5, skip=[2])
    plans = silent(cfg)
    assert [p.index for p in plans] == list(range(6))
    assert [p.hw for p in plans] == SCHEDULE
    assert [p.mode for p in plans] == ["intact", "intact", "skip", "intact", "uncond-only+low-rank", "uncond-only+low-rank"]


def test_a_one_branch_config_without_ranks_runs_full_length():
    plans = silent(StageVARConfig(refine_start=-1, branch="cond"))
    assert plans[-1].ranks is None and not plans[-1].lowrank and plans[-1].mode == "cond-only"


def test_a_one_scale_schedule_is_planned():
    plans = resolve_plan(StageVARConfig(refine_start=None), [(3, 3)], 1, warn=False)
    assert [(p.index, p.hw, p.mode) for p in plans] == [(0, (3, 3), "intact")]


def test_an_empty_schedule_warns_once_unless_the_config_is_none_or_warn_is_off():
    with pytest.warns(NoAccelerationWarning) as rec:
        assert resolve_plan(StageVARConfig(name="mine"), [], 2) == []
    assert [str(w.message) for w in rec] == ["config 'mine': this call runs no scale at all; nothing is accelerated"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_plan(stagevar.preset("none"), [], 2) == []
        assert resolve_plan(StageVARConfig(name="mine"), [], 2, warn=False) == []


def test_errors_name_the_setting_that_is_out_of_range():
    assert refused(StageVARConfig(refine_start=-7)) == \
        "refine_start=-7 is outside this model's schedule of 6 scales (valid: -6..5)"
    assert refused(StageVARConfig(refine_start=0)) == (
        "refine_start points at the first scale: the refinement stage must follow at least one intact scale "
        "(the paper starts it at the last 2-3 scales; try refine_start=-2)")
    assert refused(StageVARConfig(skip=[6])) == "skip=6 is outside this model's schedule of 6 scales (valid: -6..5)"
    assert refused(StageVARConfig(rank_ratios={9: 0.1})) == \
        "rank_ratios key=9 is outside this model's schedule of 6 scales (valid: -6..5)"
    assert refused(StageVARConfig(rank_table={-9: {0.9: [0.1]}}, alpha=0.9)) == \
        "rank_table key=-9 is outside this model's schedule of 6 scales (valid: -6..5)"
    assert refused(StageVARConfig(rank_ratio=[0.1, 0.2, 0.3])).startswith(
        "rank_ratio: 3 per-unit ratios given but the model has 2 low-rank units")
    assert refused(StageVARConfig(refine_start=-3, rank_ratio=0.5, skip=[0, 1, 2])) == (
        "scale 3 is the first scale run and is low-rank, but low-rank restoration needs an earlier scale's output; "
        "skip fewer early scales or start the refinement stage later")


@pytest.mark.parametrize("cfg, says", [
    (StageVARConfig(refine_start=-2, branch="both", name="c"), "every scale runs intact"),
    (StageVARConfig(refine_start=-1, branch="both", rank_ratio=1.0, reducer="sample", name="c"),
     "scales [5] run the low-rank path at full rank (r = M, the representative tokens are all tokens), which reproduces "
     "the intact scales up to float rounding; the others run intact"),
    (StageVARConfig(refine_start=-1, branch="both", rank_ratio=1.0, reducer="orthogonal", name="c"),
     "scales [5] run the low-rank path at full rank (r = M) through the 'orthogonal' reducer, which mixes tokens: the "
     "output differs from the intact model's without computing less; the others run intact"),
])
def test_the_no_acceleration_warning_says_why(cfg, says):
    with pytest.warns(NoAccelerationWarning) as rec:
        resolve_plan(cfg, SCHEDULE, 2)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert msg.startswith("config 'c' accelerates no scale of this 6-scale schedule and computes no less than the intact model")
    assert f": {says}. Set branch='uncond' or a rank_ratio < 1 to accelerate." in msg


def test_describe_prints_one_line_per_scale():
    plans = [ScalePlan(0, (1, 1)), ScalePlan(1, (2, 3), skipped=True), ScalePlan(12, (4, 4), branch="uncond", ranks=(3, 16))]
    assert describe(plans) == ("scale  0 1x1 M=1: intact\n"
                               "scale  1 2x3 M=6: skip\n"
                               "scale 12 4x4 M=16: uncond-only+low-rank ranks=3,16")
    assert describe([]) == ""
