"""Property tests of StageVARConfig: every valid config round-trips through JSON to an equal config
with an equal hash; every invalid value of every field raises ConfigError naming the field, and
nothing but ConfigError, whatever the input."""
import dataclasses
import json
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stagevar.config import BRANCHES, ConfigError, FrozenDict, StageVARConfig
from stagevar.lowrank import REDUCERS

SMALL = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ valid values
ratio = st.floats(min_value=0.0, max_value=1.0, exclude_min=True, allow_nan=False)
per_unit = st.lists(ratio, min_size=1, max_size=6)
ratio_or_list = st.one_of(ratio, per_unit, per_unit.map(tuple))
scale = st.integers(-40, 40)
alpha_level = st.floats(min_value=0.0, max_value=1.0, exclude_min=True, exclude_max=True, allow_nan=False)


@st.composite
def valid_kwargs(draw):
    """Keyword arguments of a valid StageVARConfig, over every field."""
    kw = dict(
        refine_start=draw(st.one_of(st.none(), st.integers())),
        branch=draw(st.sampled_from(BRANCHES)),
        reducer=draw(st.sampled_from(sorted(REDUCERS))),
        reduce_blocks=draw(st.one_of(st.none(), st.tuples(st.floats(0, 1), st.floats(0, 1)).filter(lambda t: t[0] < t[1]))),
        unit_blocks=draw(st.one_of(st.none(), st.integers(min_value=1))),
        resample_units=draw(st.booleans()),
        skip=draw(st.one_of(st.lists(scale, max_size=5), st.sets(scale, max_size=5), scale)),
        cache_condition=draw(st.booleans()),
        seed=draw(st.integers()),
        name=draw(st.text(max_size=20)),
    )
    if kw["refine_start"] is not None:  # low-rank settings need a refinement stage
        kw["rank_ratio"] = draw(st.one_of(st.none(), ratio_or_list))
        kw["rank_ratios"] = draw(st.dictionaries(scale, ratio_or_list, max_size=4))
        if draw(st.booleans()):
            alpha = draw(alpha_level)
            rows = draw(st.dictionaries(scale, st.dictionaries(alpha_level, per_unit, max_size=2), min_size=1, max_size=3))
            kw["rank_table"] = {k: {**row, alpha: draw(per_unit)} for k, row in rows.items()}
            kw["alpha"] = alpha
    return kw


@SMALL
@given(valid_kwargs())
def test_valid_configs_round_trip_through_json_with_equal_hash(kw):
    cfg = StageVARConfig(**kw)
    text = cfg.to_json()
    back = StageVARConfig.from_json(text)
    assert back == cfg and hash(back) == hash(cfg)
    assert back.to_json() == text
    assert json.loads(text) == cfg.to_dict()
    assert StageVARConfig.from_dict(cfg.to_dict()) == cfg
    assert dataclasses.replace(cfg) == cfg and {cfg: 1}[back] == 1


@SMALL
@given(valid_kwargs())
def test_valid_configs_keep_their_values_in_frozen_form(kw):
    cfg = StageVARConfig(**kw)
    frozen = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    assert cfg.rank_ratio == frozen(kw.get("rank_ratio"))
    assert isinstance(cfg.rank_ratios, FrozenDict) and cfg.rank_ratios == {k: frozen(v) for k, v in kw.get("rank_ratios", {}).items()}
    assert isinstance(cfg.rank_table, FrozenDict)
    assert cfg.rank_table == {k: {a: tuple(v) for a, v in row.items()} for k, row in kw.get("rank_table", {}).items()}
    assert all(isinstance(row, FrozenDict) for row in cfg.rank_table.values())
    skip = kw["skip"] if not isinstance(kw["skip"], int) else [kw["skip"]]
    assert cfg.skip == tuple(sorted(set(skip)))
    hash(cfg)


# ------------------------------------------------------------------ invalid values
def _not_int_text(s: str) -> bool:
    return not re.fullmatch(r"[+-]?[0-9]+", s)


not_text = st.one_of(st.none(), st.binary(max_size=5), st.booleans(), st.integers(), st.floats(),
                     st.lists(st.integers(), max_size=2), st.dictionaries(st.integers(), st.integers(), max_size=2))
anything_but_a_number = st.one_of(st.none(), st.text(max_size=5), st.binary(max_size=5), st.booleans(),
                                  st.lists(st.integers(), max_size=2), st.dictionaries(st.integers(), st.integers(), max_size=2))
bad_float = st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0, exclude_min=True), st.just(math.nan),
                      st.integers(max_value=0), st.integers(min_value=2))
bad_ratio = st.one_of(
    bad_float,
    st.one_of(st.none(), st.text(max_size=5), st.binary(max_size=5), st.booleans(), st.dictionaries(scale, ratio, max_size=2)),
    st.just([]),
    st.lists(ratio, min_size=1, max_size=3).map(lambda v: [v]),                       # nested: [[0.1, 0.2]]
    st.tuples(st.lists(ratio, max_size=2), bad_float).map(lambda t: t[0] + [t[1]]),  # one bad entry
)
bad_scale_key = st.one_of(st.text(max_size=4).filter(_not_int_text), st.floats().filter(lambda x: not x.is_integer()),
                          st.booleans(), st.binary(min_size=1, max_size=3), st.tuples(st.integers()))
bad_skip_entry = st.one_of(bad_scale_key, st.text(max_size=3), st.none(), st.lists(st.integers(), max_size=2))
bad_alpha = st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(math.nan), st.integers(),
                      anything_but_a_number)
bad_alpha_key = st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.booleans(), st.integers(),
                          st.text(max_size=4).filter(lambda s: not _text_in_unit_interval(s)), st.binary(min_size=1, max_size=3))


def _text_in_unit_interval(s: str) -> bool:
    try:
        return 0.0 < float(s) < 1.0
    except ValueError:
        return False


not_a_mapping = st.one_of(st.none(), st.text(max_size=5), st.integers(), st.lists(st.tuples(scale, ratio), max_size=2))
bad_table_row = st.one_of(
    not_a_mapping, st.just({}),
    st.dictionaries(bad_alpha_key, per_unit, min_size=1, max_size=2),
    st.dictionaries(alpha_level, bad_ratio, min_size=1, max_size=2),
)

INVALID = {
    "refine_start": st.one_of(st.floats(), st.text(max_size=3), st.booleans(), st.binary(max_size=3),
                              st.lists(st.integers(), max_size=2)),
    "branch": st.one_of(st.text(max_size=8).filter(lambda s: s not in BRANCHES), not_text),
    "reducer": st.one_of(st.text(max_size=8).filter(lambda s: s not in REDUCERS), not_text),
    "reduce_blocks": st.one_of(st.text(max_size=3), st.integers(), st.lists(st.floats(0, 1), max_size=3).filter(lambda v: len(v) != 2),
                               st.tuples(st.floats(), st.floats()).filter(lambda t: not 0 <= t[0] < t[1] <= 1),
                               st.tuples(st.text(max_size=2), st.floats(0, 1))),
    "rank_ratio": bad_ratio.filter(lambda v: v is not None),
    "rank_ratios": st.one_of(not_a_mapping, st.dictionaries(bad_scale_key, ratio, min_size=1, max_size=2),
                             st.dictionaries(scale, bad_ratio, min_size=1, max_size=2)),
    "rank_table": st.one_of(not_a_mapping.filter(lambda v: v is not None),
                            st.dictionaries(bad_scale_key, st.just({0.5: [0.1]}), min_size=1, max_size=2),
                            st.dictionaries(scale, bad_table_row, min_size=1, max_size=2)),
    "alpha": bad_alpha.filter(lambda v: v is not None),
    "unit_blocks": st.one_of(st.integers(max_value=0), st.floats(), st.booleans(), st.text(max_size=3), st.binary(max_size=3)),
    "resample_units": st.one_of(st.integers(), st.none(), st.text(max_size=3), st.floats()),
    "skip": st.one_of(st.text(min_size=1, max_size=4), st.binary(max_size=4), st.none(), st.floats(), st.booleans(),
                      st.dictionaries(scale, scale, max_size=2),
                      st.tuples(st.lists(scale, max_size=2), bad_skip_entry).map(lambda t: t[0] + [t[1]])),
    "cache_condition": st.one_of(st.integers(), st.none(), st.text(max_size=3), st.floats()),
    "seed": st.one_of(st.floats(), st.booleans(), st.none(), st.text(max_size=3), st.binary(max_size=3)),
    "name": st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=4), st.lists(st.text(max_size=2), max_size=2)),
}


def test_every_field_has_an_invalid_strategy():
    assert set(INVALID) == {f.name for f in dataclasses.fields(StageVARConfig)}


@pytest.mark.parametrize("field", sorted(INVALID))
def test_invalid_field_raises_config_error_naming_it(field):
    @SMALL
    @given(st.data())
    def check(data):
        value = data.draw(INVALID[field], label=field)
        kw = {"refine_start": -2, field: value}
        with pytest.raises(ConfigError) as err:  # any other exception type fails the test
            StageVARConfig(**kw)
        assert field in str(err.value)
        with pytest.raises(ConfigError):
            StageVARConfig().replace(**{field: value})

    check()


json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8)


@SMALL
@given(st.dictionaries(st.sampled_from(sorted(INVALID)), json_value, max_size=4))
def test_any_json_object_gives_a_config_or_a_config_error(d):
    text = json.dumps(d)  # NaN and Infinity included, as Python's json writes them
    try:
        cfg = StageVARConfig.from_json(text)
    except ConfigError:
        return
    assert StageVARConfig.from_json(cfg.to_json()) == cfg and hash(cfg) == hash(StageVARConfig.from_dict(cfg.to_dict()))


@SMALL
@given(st.one_of(st.text(max_size=30), st.binary(max_size=30), json_value.map(json.dumps)))
def test_any_text_gives_a_config_or_a_config_error(text):
    try:
        StageVARConfig.from_json(text)
    except ConfigError:
        pass
