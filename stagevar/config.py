"""StageVARConfig: what to do in the fidelity-refinement stage, as plain data.

A config never names side lengths. Scales are indexed by their position in the model's
schedule (negative indices count from the end), so one config works at every resolution and
aspect ratio. It validates itself on construction and round-trips through JSON.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

BRANCHES = ("uncond", "cond", "both")
PROJECTIONS = ("gaussian", "orthogonal", "sample")
SELECTIONS = ("norm", "mean_distance")

Ratio = Union[float, Tuple[float, ...]]


class ConfigError(ValueError):
    """A StageVARConfig (or its combination with a model) that cannot be used as given."""


def _ratio(value, where: str) -> Ratio:
    """Normalise a rank ratio (one float, or one float per unit) and check its range."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError(f"{where}: an empty list of per-unit ratios; give one float per unit or a single float")
        return tuple(_ratio(v, where) for v in value)  # type: ignore[misc]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a float in (0, 1] or a list of them, got {value!r}")
    value = float(value)
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise ConfigError(f"{where}: rank ratio {value} is outside (0, 1]; 1.0 means full rank, 0.1 keeps ~10% of tokens")
    return value


def _scale_key(key, where: str) -> int:
    try:
        if isinstance(key, bool) or (isinstance(key, float) and not key.is_integer()):
            raise ValueError
        return int(key)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: scale key {key!r} is not an integer scale index (negative counts from the end)") from None


@dataclass(frozen=True)
class StageVARConfig:
    """How to run the refinement stage of a next-scale-prediction model.

    Attributes:
        refine_start: index of the first refinement-stage scale in the model's schedule;
            negative counts from the end (``-2`` = the last two scales). ``None`` means no
            refinement stage: every scale runs intact (useful with ``skip`` alone, or to check
            the loop itself).
        branch: which classifier-free-guidance branch runs in the refinement stage:
            ``"uncond"`` (the paper: condition dropped), ``"cond"`` (keep the conditional half),
            or ``"both"`` (keep CFG; no batch halving).
        rank_ratio: low-rank ratio for every refinement-stage scale, one float or one per unit;
            rank ``r = int(ratio * M) + 1`` tokens of the scale's ``M``. ``None``: no low rank
            unless ``rank_ratios`` or ``rank_table`` name the scale.
        rank_ratios: per-scale overrides ``{scale_index: ratio or [ratio per unit]}``.
        rank_table: ``{scale_index: {alpha: [ratio per unit]}}``, measured energy ranks;
            looked up with ``alpha``.
        alpha: energy level to look up in ``rank_table`` (e.g. 0.96).
        resample_units: a per-unit ratio list whose length differs from the model's unit count
            is resampled to it by linear interpolation over relative unit position (instead of
            raising). Presets written for one depth set it so they run at any depth.
        unit_blocks: blocks per low-rank unit; ``None`` takes the model family's default
            (VAR: every block; Infinity: one block chunk).
        projection: ``"gaussian"`` (random projection, the paper), ``"orthogonal"`` (an
            orthonormalised Gaussian), or ``"sample"`` (run the representative tokens themselves).
        selection: how the representative positions are chosen: ``"norm"`` (sampled without
            replacement with probability proportional to ``||x_i||^2``, the paper) or
            ``"mean_distance"`` (the ``r`` tokens farthest from the token-map mean,
            deterministic, as FastVAR prunes).
        skip: scale indices not run at all (opt-in; the image is decoded from what was
            generated). Never part of a default preset.
        cache_condition: compute each block's condition modulation (VAR's AdaLN ``ada_lin``)
            once per call instead of once per scale. Exact (bit-identical); it saves a weight
            read per block per scale, which matters when small scales are memory-bound.
        seed: extra seed mixed into the projection/selection generator. Projection draws are
            seeded from the call's ``g_seed`` (if given) and this value; they never touch the
            sampling generator.
        name: a label carried into reports.
    """

    refine_start: Optional[int] = -2
    branch: str = "uncond"
    rank_ratio: Optional[Ratio] = None
    rank_ratios: Dict[int, Ratio] = field(default_factory=dict)
    rank_table: Dict[int, Dict[float, Tuple[float, ...]]] = field(default_factory=dict)
    alpha: Optional[float] = None
    unit_blocks: Optional[int] = None
    resample_units: bool = False
    projection: str = "gaussian"
    selection: str = "norm"
    skip: Tuple[int, ...] = ()
    cache_condition: bool = True
    seed: int = 0
    name: str = "custom"

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if self.refine_start is not None and (isinstance(self.refine_start, bool) or not isinstance(self.refine_start, int)):
            raise ConfigError(f"refine_start must be an integer scale index (e.g. -2 for the last two scales) or None, got {self.refine_start!r}")
        if self.branch not in BRANCHES:
            raise ConfigError(f"branch={self.branch!r} is not one of {BRANCHES}; 'uncond' drops the condition as in the paper")
        if self.projection not in PROJECTIONS:
            raise ConfigError(f"projection={self.projection!r} is not one of {PROJECTIONS}")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"selection={self.selection!r} is not one of {SELECTIONS}")
        if self.rank_ratio is not None:
            set_("rank_ratio", _ratio(self.rank_ratio, "rank_ratio"))
        if not isinstance(self.rank_ratios, dict):
            raise ConfigError("rank_ratios must be a dict {scale_index: ratio or [ratio per unit]}")
        set_("rank_ratios", {_scale_key(k, "rank_ratios"): _ratio(v, f"rank_ratios[{k}]") for k, v in self.rank_ratios.items()})
        if not isinstance(self.rank_table, dict):
            raise ConfigError("rank_table must be a dict {scale_index: {alpha: [ratio per unit]}}")
        table = {}
        for k, per_alpha in self.rank_table.items():
            if not isinstance(per_alpha, dict) or not per_alpha:
                raise ConfigError(f"rank_table[{k}] must be a non-empty dict {{alpha: [ratio per unit]}}")
            row = {}
            for a, v in per_alpha.items():
                try:
                    a_f = float(a)
                except (TypeError, ValueError):
                    raise ConfigError(f"rank_table[{k}]: alpha key {a!r} is not a number") from None
                ratios = _ratio(v, f"rank_table[{k}][{a}]")
                row[a_f] = ratios if isinstance(ratios, tuple) else (ratios,)
            table[_scale_key(k, "rank_table")] = row
        set_("rank_table", table)
        if self.alpha is not None:
            if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not (0.0 < float(self.alpha) < 1.0):
                raise ConfigError(f"alpha={self.alpha!r} must be an energy level in (0, 1), e.g. 0.96")
            set_("alpha", float(self.alpha))
            if not self.rank_table:
                raise ConfigError("alpha is set but rank_table is empty: give a rank_table (see stagevar.calibrate) or use rank_ratio")
            missing = [k for k, row in self.rank_table.items() if self.alpha not in row]
            if missing:
                have = sorted({a for row in self.rank_table.values() for a in row})
                raise ConfigError(f"alpha={self.alpha} has no entry in rank_table for scales {missing}; alphas present: {have}")
        elif self.rank_table:
            raise ConfigError("rank_table is given but alpha is not: set alpha to pick a column (e.g. alpha=0.96)")
        if self.unit_blocks is not None and (isinstance(self.unit_blocks, bool) or not isinstance(self.unit_blocks, int) or self.unit_blocks < 1):
            raise ConfigError(f"unit_blocks must be a positive integer (blocks per low-rank unit) or None, got {self.unit_blocks!r}")
        if isinstance(self.skip, int) and not isinstance(self.skip, bool):
            set_("skip", (self.skip,))
        try:
            set_("skip", tuple(sorted({_scale_key(s, "skip") for s in self.skip})))
        except TypeError:
            raise ConfigError(f"skip must be a list of scale indices, got {self.skip!r}") from None
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.resample_units, bool):
            raise ConfigError(f"resample_units must be True or False, got {self.resample_units!r}")
        if not isinstance(self.cache_condition, bool):
            raise ConfigError(f"cache_condition must be True or False, got {self.cache_condition!r}")
        if not isinstance(self.name, str):
            raise ConfigError("name must be a string")
        if self.refine_start is None and (self.rank_ratio is not None or self.rank_ratios or self.rank_table):
            raise ConfigError("low-rank settings are given but refine_start is None: set refine_start to the first refinement scale")

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        """A JSON-ready dict (scale and alpha keys become strings)."""
        d = dataclasses.asdict(self)
        d["rank_ratio"] = list(self.rank_ratio) if isinstance(self.rank_ratio, tuple) else self.rank_ratio
        d["rank_ratios"] = {str(k): (list(v) if isinstance(v, tuple) else v) for k, v in self.rank_ratios.items()}
        d["rank_table"] = {str(k): {repr(a): list(v) for a, v in row.items()} for k, row in self.rank_table.items()}
        d["skip"] = list(self.skip)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StageVARConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error that names them."""
        if not isinstance(d, dict):
            raise ConfigError(f"expected a JSON object for StageVARConfig, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown StageVARConfig field(s) {unknown}; known fields: {sorted(known)}")
        d = dict(d)
        if "skip" in d and d["skip"] is not None:
            d["skip"] = tuple(d["skip"])
        return cls(**d)

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "StageVARConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"not valid JSON for a StageVARConfig: {e}") from None
        return cls.from_dict(data)

    def save(self, path) -> None:
        with open(path, "w") as f:
            f.write(self.to_json() + "\n")

    @classmethod
    def load(cls, path) -> "StageVARConfig":
        with open(path) as f:
            return cls.from_json(f.read())

    def replace(self, **changes) -> "StageVARConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def has_lowrank(self) -> bool:
        return self.rank_ratio is not None or bool(self.rank_ratios) or bool(self.rank_table)


def ratios_for_units(ratio: Ratio, num_units: int, where: str, resample: bool = False) -> List[float]:
    """Expand one ratio, or a per-unit list, to ``num_units`` floats.

    A per-unit list must have exactly ``num_units`` entries unless ``resample``: then it is
    linearly interpolated over relative unit position (entry ``i`` of ``n`` sits at ``i/(n-1)``);
    a single unit takes the mean.
    """
    if isinstance(ratio, tuple):
        if len(ratio) != num_units and resample:
            n = len(ratio)
            if num_units == 1:  # one unit covers every position: the mean
                return [sum(ratio) / n]
            if n == 1:
                return [ratio[0]] * num_units
            out = []
            for u in range(num_units):
                pos = u * (n - 1) / (num_units - 1)
                i = min(int(pos), n - 2)
                t = pos - i
                out.append(ratio[i] * (1 - t) + ratio[i + 1] * t)
            return out
        if len(ratio) != num_units:
            raise ConfigError(
                f"{where}: {len(ratio)} per-unit ratios given but the model has {num_units} low-rank units "
                f"at this unit_blocks; give {num_units} values, one float, or change unit_blocks")
        return list(ratio)
    return [float(ratio)] * num_units


def rank_from_ratio(ratio: float, M: int) -> int:
    """Tokens kept at a scale of ``M`` tokens: ``int(ratio * M) + 1``, at most ``M``."""
    return min(M, int(ratio * M) + 1)


def normalise_index(index: int, n: int, what: str) -> int:
    """Turn a possibly negative scale index into ``0..n-1`` or raise naming the valid range."""
    j = index + n if index < 0 else index
    if not 0 <= j < n:
        raise ConfigError(f"{what}={index} is outside this model's schedule of {n} scales (valid: {-n}..{n - 1})")
    return j
