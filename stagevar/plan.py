"""A config resolved against one model's scale schedule and block layout: one entry per scale.

Every static decision of a call lives here: the units of blocks that are reduced together
(:func:`unit_layout`), and per scale whether it runs intact, on one CFG branch, reduced (and to
how many tokens per unit), or not at all (:func:`resolve_plan`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

from ._warnings import warn_at_caller
from .config import ConfigError, Ratio, StageVARConfig
from .lowrank import REDUCERS


# ---------------------------------------------------------------- helpers of the resolution
Units = List[Tuple[int, int]]


def unit_layout(n_blocks: int, unit_blocks: int) -> Units:
    """``[lo, hi)`` block ranges of the low-rank units: ``unit_blocks`` consecutive blocks each
    (the last unit may be shorter).

    Raises:
        ConfigError: no blocks, or more blocks per unit than the model has.
    """
    if n_blocks == 0:
        raise ConfigError("the model has no transformer blocks to run")
    if unit_blocks > n_blocks:
        raise ConfigError(f"unit_blocks={unit_blocks} exceeds the model's {n_blocks} blocks; use at most {n_blocks}")
    return [(lo, min(lo + unit_blocks, n_blocks)) for lo in range(0, n_blocks, unit_blocks)]


def reduced_units(config: StageVARConfig, units: Units) -> List[bool]:
    """Per unit, whether the config's ``reduce_blocks`` lets it be reduced."""
    if config.reduce_blocks is None:
        return [True] * len(units)
    depth = units[-1][1]
    lo, hi = round(config.reduce_blocks[0] * depth), round(config.reduce_blocks[1] * depth)
    return [lo <= a and b <= hi for a, b in units]


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


def _per_scale(mapping, n: int, name: str, value, suffix: str = "") -> dict:
    """``{scale: (ratio, where)}`` of a config mapping; two keys naming one scale of this schedule
    (``-1`` and ``3`` of four scales) are refused, naming both."""
    out, given = {}, {}
    for k, v in mapping.items():
        j = normalise_index(k, n, f"{name} key")
        if j in out:
            raise ConfigError(f"{name} keys {given[j]} and {k} both name scale {j} of this {n}-scale schedule; give "
                              f"each scale once")
        out[j], given[j] = (value(v), f"{name}[{k}]{suffix}"), k
    return out


class NoAccelerationWarning(UserWarning):
    """The config accelerates no scale of this model's schedule."""


@dataclass(frozen=True)
class ScalePlan:
    """What runs at one scale.

    Attributes:
        index: position in the schedule.
        hw: token-map size ``(h, w)``; ``M = h * w``.
        branch: ``"both"`` (2B rows, CFG), ``"cond"`` or ``"uncond"`` (B rows, one branch).
        ranks: tokens computed per unit (``None`` for a unit that runs intact), or ``None`` when
            the whole scale runs at full length.
        skipped: the scale is not run at all.
    """

    index: int
    hw: Tuple[int, int]
    branch: str = "both"
    ranks: Optional[Tuple[Optional[int], ...]] = None
    skipped: bool = False

    @property
    def M(self) -> int:
        return self.hw[0] * self.hw[1]

    @property
    def lowrank(self) -> bool:
        """Runs the projection/restoration path (even at full rank, which is a check)."""
        return self.ranks is not None

    @property
    def accelerated(self) -> bool:
        """Computes less than the intact scale would."""
        return (self.skipped or self.branch != "both"
                or self.ranks is not None and any(r is not None and r < self.M for r in self.ranks))

    def unit_tokens(self, num_units: int) -> Tuple[int, ...]:
        """Tokens each of ``num_units`` units computes (``M`` where it runs intact)."""
        if self.ranks is None:
            return (self.M,) * num_units
        return tuple(self.M if r is None else r for r in self.ranks)

    @property
    def mode(self) -> str:
        if self.skipped:
            return "skip"
        parts = []
        if self.branch != "both":
            parts.append(f"{self.branch}-only")
        if self.lowrank:
            parts.append("low-rank")
        return "+".join(parts) if parts else "intact"


def resolve_plan(config: StageVARConfig, schedule: Sequence[Tuple[int, int]], units: Union[int, Units],
                 warn: bool = True) -> List[ScalePlan]:
    """Resolve ``config`` against a schedule of ``(h, w)`` token-map sizes.

    Args:
        config: the configuration.
        schedule: per scale ``(h, w)``, coarse to fine.
        units: the model's low-rank units at the config's ``unit_blocks`` (:func:`unit_layout`),
            or their number (one block each).
        warn: emit :class:`NoAccelerationWarning` when nothing is accelerated (unless the
            config is the ``"none"`` preset, which accelerates nothing on purpose).

    Returns:
        one :class:`ScalePlan` per scale.
    """
    if isinstance(units, int):
        units = [(u, u + 1) for u in range(units)]
    num_units, reduced = len(units), reduced_units(config, units)
    n = len(schedule)
    if n == 0:  # the call runs no scale (e.g. Infinity's trunk_scale=0): nothing to plan or accelerate
        if warn and config.name != "none":
            warn_at_caller(f"config {config.name!r}: this call runs no scale at all; nothing is accelerated",
                           NoAccelerationWarning)
        return []
    start = n if config.refine_start is None else normalise_index(config.refine_start, n, "refine_start")
    if start == 0:
        raise ConfigError("refine_start points at the first scale: the refinement stage must follow at least one intact scale "
                          "(the paper starts it at the last 2-3 scales; try refine_start=-2)")
    skips = {normalise_index(s, n, "skip") for s in config.skip}

    per_scale = _per_scale(config.rank_ratios, n, "rank_ratios", lambda v: v)
    for j, entry in _per_scale(config.rank_table, n, "rank_table", lambda row: row[config.alpha],
                               f"[{config.alpha}]").items():
        per_scale.setdefault(j, entry)  # rank_ratios overrides the measured table
    outside = sorted(j for j in per_scale if j < start)
    if outside:
        raise ConfigError(f"rank ratios are given for scales {outside} before the refinement stage (starts at scale {start}); "
                          f"move refine_start earlier or drop those entries")

    plans = []
    for si, (h, w) in enumerate(schedule):
        if si in skips:
            plans.append(ScalePlan(si, (h, w), skipped=True))
            continue
        if si < start:
            plans.append(ScalePlan(si, (h, w)))
            continue
        ratio, where = per_scale.get(si, (config.rank_ratio, "rank_ratio"))
        ranks = None
        if ratio is not None:
            ranks = tuple(rank_from_ratio(r, h * w) if keep else None
                          for r, keep in zip(ratios_for_units(ratio, num_units, where, config.resample_units), reduced))
        plans.append(ScalePlan(si, (h, w), branch=config.branch, ranks=ranks))

    first_run = next((p for p in plans if not p.skipped), None)
    if first_run is None:
        raise ConfigError(f"skip={list(config.skip)} skips every scale of this {n}-scale schedule; nothing would be generated")
    if first_run.lowrank:
        raise ConfigError(f"scale {first_run.index} is the first scale run and is low-rank, but low-rank restoration needs "
                          f"an earlier scale's output; skip fewer early scales or start the refinement stage later")
    if warn and config.name != "none" and not any(p.accelerated for p in plans):
        full = [p.index for p in plans if p.lowrank]
        if not full:
            what = "every scale runs intact"
        elif REDUCERS[config.reducer].exact_at_full_rank:
            what = (f"scales {full} run the low-rank path at full rank (r = M, the representative tokens are all "
                    f"tokens), which reproduces the intact scales up to float rounding; the others run intact")
        else:
            what = (f"scales {full} run the low-rank path at full rank (r = M) through the {config.reducer!r} "
                    f"reducer, which mixes tokens: the output differs from the intact model's without "
                    f"computing less; the others run intact")
        warn_at_caller(
            f"config {config.name!r} accelerates no scale of this {n}-scale schedule and computes no less than the "
            f"intact model (refine_start={config.refine_start}, branch={config.branch!r}, no rank below M, no skip): "
            f"{what}. "
            f"Set branch='uncond' or a rank_ratio < 1 to accelerate.",
            NoAccelerationWarning)
    return plans


def describe(plans: Sequence[ScalePlan]) -> str:
    """One line per scale: index, size, mode, ranks."""
    lines = []
    for p in plans:
        ranks = "" if p.ranks is None else " ranks=" + ",".join("M" if r is None else str(r) for r in p.ranks)
        lines.append(f"scale {p.index:2d} {p.hw[0]}x{p.hw[1]} M={p.M}: {p.mode}{ranks}")
    return "\n".join(lines)
