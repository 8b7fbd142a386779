"""stagevar.config: behaviours the mutation run (TESTING.md) found untested.

Mostly what an error tells the user (the field, the value given and its type, what to give
instead) and that a config normalises what it is given into plain JSON-ready values.
"""
import json
import re
from fractions import Fraction

import numpy as np
import pytest

from stagevar.config import ConfigError, FrozenDict, StageVARConfig
from stagevar.plan import normalise_index, ratios_for_units


def refuses(message, **kwargs):
    with pytest.raises(ConfigError) as e:
        StageVARConfig(**kwargs)
    assert str(e.value) == message


# ------------------------------------------------------------------ FrozenDict

def test_frozendict_is_built_like_a_dict_and_stays_read_only():
    d = FrozenDict({"a": 1}, b=2)
    assert d == {"a": 1, "b": 2}
    with pytest.raises(TypeError) as e:
        d["c"] = 3
    assert str(e.value) == ("this mapping is read-only: a StageVARConfig (every preset included) is shared and hashable, so "
                            "its fields cannot change in place. Build a changed config instead, e.g. "
                            "cfg.replace(rank_ratios={**cfg.rank_ratios, -1: 0.1})")
    with pytest.raises(TypeError, match="read-only"):
        d.__init__({"z": 9})          # not even by calling __init__ again
    assert d == {"a": 1, "b": 2}


def test_frozendict_fromkeys():
    d = FrozenDict.fromkeys([-1, -2], 0.5)
    assert isinstance(d, FrozenDict) and d == {-1: 0.5, -2: 0.5}
    assert FrozenDict.fromkeys("ab") == {"a": None, "b": None}
    with pytest.raises(TypeError):
        d[-1] = 0.1


# ------------------------------------------------------------------ errors name the value and its type

@pytest.mark.parametrize("kwargs, message", [
    (dict(refine_start=1.5), "refine_start must be an integer scale index (e.g. -2 for the last two scales) or None, got 1.5 (a float)"),
    (dict(resample_units=1), "resample_units must be True or False, got 1 (a int)"),
    (dict(cache_condition="yes"), "cache_condition must be True or False, got 'yes' (a str)"),
    (dict(rank_ratio="0.2"), "rank_ratio: expected a float in (0, 1] or a list of them, got '0.2' (a str); "
                             "write the number without quotes"),
    (dict(rank_ratio=[None]), "rank_ratio[0]: expected a float in (0, 1] or a list of them, got None (a NoneType)"),
    (dict(rank_ratio=10 ** 400), "rank_ratio: rank ratio inf is outside (0, 1]; 1.0 means full rank, 0.1 keeps ~10% of tokens"),
    (dict(rank_ratio=-10 ** 400), "rank_ratio: rank ratio -inf is outside (0, 1]; 1.0 means full rank, 0.1 keeps ~10% of tokens"),
    (dict(rank_ratios=[1]), "rank_ratios must be a dict {scale_index: ratio or [ratio per unit]} (or {} for none), got [1] (a list)"),
    (dict(rank_table=5, alpha=0.9), "rank_table must be a dict {scale_index: {alpha: [ratio per unit]}} (or {} for none), got 5 (a int)"),
    (dict(rank_table={-1: 5}, alpha=0.9), "rank_table[-1] must be a non-empty dict {alpha: [ratio per unit]}, got 5 (a int)"),
    (dict(rank_table={-1: {0.9: [0.1]}, "-1": {0.9: [0.1]}}, alpha=0.9),
     "rank_table: keys -1 and '-1' both name -1; give each only once"),
    (dict(rank_table={"x": {0.9: [0.1]}}, alpha=0.9),
     "rank_table: scale key 'x' (a str) is not an integer scale index (negative counts from the end), e.g. -1 for the last scale"),
    (dict(rank_table={-1: {1.0: [0.1]}}, alpha=0.9),
     "rank_table[-1]: alpha key 1.0 (a float) is not a number in (0, 1); key each row by the energy level it was measured at, "
     "e.g. {0.96: [0.1, 0.2]}"),
    (dict(rank_table={-1: {0: [0.1]}}, alpha=0.9),
     "rank_table[-1]: alpha key 0 (a int) is not a number in (0, 1); key each row by the energy level it was measured at, "
     "e.g. {0.96: [0.1, 0.2]}"),
    (dict(skip="1"), "skip must be a list of integer scale indices, e.g. [-2, -1] ([] to skip nothing), got '1' (a str)"),
    (dict(rank_table={-1: {0.9: [0.1]}}, alpha=1.0), "alpha must be an energy level in (0, 1), e.g. 0.96, or None; got 1.0 (a float)"),
    (dict(rank_table={-1: {0.9: [0.1]}}, alpha=0.0), "alpha must be an energy level in (0, 1), e.g. 0.96, or None; got 0.0 (a float)"),
    (dict(alpha=0.9), "alpha is set but rank_table is empty: give a rank_table (see stagevar.calibrate) or use rank_ratio"),
    (dict(rank_table={-1: {0.9: [0.1]}}), "rank_table is given but alpha is not: set alpha to pick a column (e.g. alpha=0.96)"),
    (dict(rank_table={-1: {0.9: [0.1]}, -2: {0.8: [0.1]}}, alpha=0.9),
     "alpha=0.9 has no entry in rank_table for scales [-2]; alphas present: [0.8, 0.9]"),
    (dict(seed=1.0), "seed must be an integer, got 1.0 (a float)"),
    (dict(name=3), "name must be a string (a label for reports), got 3 (a int)"),
    (dict(refine_start=None, rank_ratios={-1: 0.1}),
     "low-rank settings are given but refine_start is None: set refine_start to the first refinement scale"),
    (dict(refine_start=None, rank_table={-1: {0.9: [0.1]}}, alpha=0.9),
     "low-rank settings are given but refine_start is None: set refine_start to the first refinement scale"),
    (dict(branch="x"), "branch='x' is not one of ('uncond', 'cond', 'both'); 'uncond' drops the condition as in the paper"),
    (dict(reducer="x"), "reducer='x' is not one of ('fastvar', 'gaussian', 'orthogonal', 'sample'); 'gaussian' is the paper's random projection"),
])
def test_errors_say_the_field_the_value_and_what_to_give(kwargs, message):
    refuses(message, **kwargs)


def test_long_values_are_cut_in_messages():
    exactly_80 = "a" * 78                 # repr is 80 characters: shown whole
    refuses(f"seed must be an integer, got {exactly_80!r} (a str)", seed=exactly_80)
    longer = "b" * 79                     # repr is 81 characters: the first 77, then "..."
    refuses(f"seed must be an integer, got {repr(longer)[:77]}... (a str)", seed=longer)


def test_from_dict_and_from_json_name_the_wrong_type():
    with pytest.raises(ConfigError) as e:
        StageVARConfig.from_dict([1])
    assert str(e.value) == "expected a JSON object for StageVARConfig, got list"
    with pytest.raises(ConfigError, match=r"^from_json takes JSON text \(str or bytes\), got dict; "):
        StageVARConfig.from_json({"branch": "cond"})


# ------------------------------------------------------------------ normalised, JSON-ready values

def test_numpy_and_fraction_values_become_plain_python_values():
    cfg = StageVARConfig(refine_start=np.int64(-2), unit_blocks=np.int32(2), seed=np.int64(7), rank_ratio=0.5,
                         rank_table={-1: {0.5: [0.2]}}, alpha=Fraction(1, 2))
    assert type(cfg.refine_start) is int and type(cfg.unit_blocks) is int and type(cfg.seed) is int
    assert type(cfg.alpha) is float
    assert StageVARConfig.from_json(cfg.to_json()) == cfg   # JSON-ready: no numpy or Fraction left


def test_to_json_is_indented_by_two_unless_asked_otherwise():
    cfg = StageVARConfig(rank_ratio=0.2)
    assert cfg.to_json() == json.dumps(cfg.to_dict(), indent=2)
    one_line = cfg.to_json(indent=None)
    assert "\n" not in one_line and json.loads(one_line) == cfg.to_dict()


# ------------------------------------------------------------------ helpers used by the plan

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
