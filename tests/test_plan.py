"""stagevar.plan: a config resolved against a schedule and block units, by position; the resolution's helpers."""
import re
import warnings

import pytest

import stagevar
from stagevar import ConfigError, StageVARConfig
from stagevar.plan import NoAccelerationWarning, ScalePlan, describe, normalise_index, ratios_for_units, resolve_plan

# ------------------------------------------------------------------------------------------
VAR256 = [(p, p) for p in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)]


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



# ------------------------------------------------------------------------------------------
# The resolution's helpers: behaviours the mutation run (TESTING.md) found untested.
def test_a_per_unit_list_of_the_wrong_length_is_refused_unless_resampling():
    with pytest.raises(ConfigError, match=re.escape("w: 3 per-unit ratios given but the model has 2 low-rank units")):
        ratios_for_units((0.1, 0.2, 0.3), 2, "w")
    assert ratios_for_units((0.3,), 4, "w", resample=True) == [0.3] * 4
    assert ratios_for_units((0.1, 0.3), 1, "w", resample=True) == [pytest.approx(0.2)]


def test_normalise_index_accepts_exactly_minus_n_to_n_minus_1():
    assert [normalise_index(i, 4, "k") for i in (-4, -1, 0, 3)] == [0, 3, 0, 3]
    for bad in (4, -5):
        with pytest.raises(ConfigError) as e:
            normalise_index(bad, 4, "skip")
        assert str(e.value) == f"skip={bad} is outside this model's schedule of 4 scales (valid: -4..3)"



# ------------------------------------------------------------------------------------------
# stagevar.plan: behaviours the mutation run (TESTING.md) found untested.
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


def test_two_keys_naming_one_scale_are_refused_naming_both():
    """rank_ratios {-1: .., 3: ..} on four scales resolved silently by dict order."""
    sched = [(1, 1), (2, 2), (3, 3), (4, 4)]
    with pytest.raises(ConfigError, match=r"rank_ratios keys -1 and 3 both name scale 3 of this 4-scale schedule"):
        resolve_plan(StageVARConfig(refine_start=-2, rank_ratios={-1: 0.1, 3: 0.2}), sched, 2)
    table = {2: {0.96: [0.3]}, -2: {0.96: [0.4]}}
    with pytest.raises(ConfigError, match=r"rank_table keys 2 and -2 both name scale 2"):
        resolve_plan(StageVARConfig(refine_start=-2, rank_table=table, alpha=0.96), sched, 1)
    # on a longer schedule the same keys are two scales, and rank_ratios still wins over the table
    plans = resolve_plan(StageVARConfig(refine_start=-3, rank_ratios={-1: 0.5}, rank_table={-1: {0.96: [0.25]},
                                                                                          3: {0.96: [0.75]}},
                                        alpha=0.96), sched + [(5, 5)], 1)
    assert plans[-1].ranks == (int(0.5 * 25) + 1,) and plans[3].ranks == (int(0.75 * 16) + 1,)


def test_unit_layout_groups_consecutive_blocks_and_refuses_what_cannot_be_grouped():
    from stagevar.plan import unit_layout
    assert unit_layout(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert unit_layout(4, 4) == [(0, 4)]
    assert unit_layout(3, 1) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ConfigError, match="^the model has no transformer blocks to run$"):
        unit_layout(0, 1)
    with pytest.raises(ConfigError, match=r"unit_blocks=5 exceeds the model's 4 blocks; use at most 4"):
        unit_layout(4, 5)


def test_reduce_blocks_keeps_the_units_inside_the_fraction_of_the_depth_and_the_plan_runs_the_others_intact():
    from stagevar.plan import reduced_units, unit_layout
    cfg = StageVARConfig(rank_ratio=0.25, reduce_blocks=(0.25, 0.75))
    assert reduced_units(cfg, unit_layout(8, 2)) == [False, True, True, False]        # blocks 2..6 of 8
    assert reduced_units(cfg, unit_layout(8, 1)) == [False, False, True, True, True, True, False, False]
    assert reduced_units(cfg, unit_layout(8, 3)) == [False, True, False]               # (0,3) (3,6) (6,8)
    assert reduced_units(StageVARConfig(reduce_blocks=(0.0, 1.0)), unit_layout(5, 2)) == [True] * 3
    assert reduced_units(StageVARConfig(rank_ratio=0.25), unit_layout(8, 3)) == [True] * 3
    sched = [(1, 1), (2, 2), (4, 4)]
    plans = resolve_plan(cfg, sched, unit_layout(8, 2))
    assert plans[-1].ranks == (None, 5, 5, None)
    assert plans[-1].unit_tokens(4) == (16, 5, 5, 16)
    assert plans[0].unit_tokens(4) == (1, 1, 1, 1)
    # an int is that many one-block units
    plans_8 = resolve_plan(cfg, sched, unit_layout(8, 1))
    assert resolve_plan(cfg, sched, 8) == plans_8
    assert plans_8[-1].ranks == (None, None, 5, 5, 5, 5, None, None)
    first_half = StageVARConfig(rank_ratio=0.25, reduce_blocks=(0.0, 0.5))
    assert resolve_plan(first_half, sched, 8)[-1].ranks == (5, 5, 5, 5, None, None, None, None)


def test_the_ratio_a_wrong_length_list_came_from_is_named():
    sched = [(1, 1), (2, 2), (4, 4)]
    with pytest.raises(ConfigError, match=r"^rank_ratios\[-1\]: 3 per-unit ratios given but the model has 2 "):
        resolve_plan(StageVARConfig(rank_ratios={-1: [0.1, 0.2, 0.3]}), sched, 2)
    with pytest.raises(ConfigError, match=r"^rank_table\[2\]\[0\.96\]: 3 per-unit ratios given but the model has 2 "):
        resolve_plan(StageVARConfig(rank_table={2: {0.96: [0.1, 0.2, 0.3]}}, alpha=0.96), sched, 2)
    with pytest.raises(ConfigError, match=r"^rank_ratio: 3 per-unit ratios given but the model has 2 "):
        resolve_plan(StageVARConfig(rank_ratio=[0.1, 0.2, 0.3]), sched, 2)


def test_describe_marks_units_that_run_intact_with_M():
    assert describe([ScalePlan(3, (2, 2), ranks=(None, 2, None))]) == "scale  3 2x2 M=4: low-rank ranks=M,2,M"
