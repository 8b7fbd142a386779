"""A config resolved against one model's scale schedule: one entry per scale."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ._warnings import warn_at_caller
from .config import ConfigError, StageVARConfig, normalise_index, rank_from_ratio, ratios_for_units


class NoAccelerationWarning(UserWarning):
    """The config accelerates no scale of this model's schedule."""


@dataclass(frozen=True)
class ScalePlan:
    """What runs at one scale.

    Attributes:
        index: position in the schedule.
        hw: token-map size ``(h, w)``; ``M = h * w``.
        branch: ``"both"`` (2B rows, CFG), ``"cond"`` or ``"uncond"`` (B rows, one branch).
        ranks: tokens computed per unit, or ``None`` when the scale runs at full length.
        skip: the scale is not run at all.
    """

    index: int
    hw: Tuple[int, int]
    branch: str = "both"
    ranks: Optional[Tuple[int, ...]] = None
    skip: bool = False

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
        return self.skip or self.branch != "both" or (self.ranks is not None and any(r < self.M for r in self.ranks))

    @property
    def mode(self) -> str:
        if self.skip:
            return "skip"
        parts = []
        if self.branch != "both":
            parts.append(f"{self.branch}-only")
        if self.lowrank:
            parts.append("low-rank")
        return "+".join(parts) if parts else "intact"


def resolve_plan(config: StageVARConfig, schedule: Sequence[Tuple[int, int]], num_units: int,
                 warn: bool = True) -> List[ScalePlan]:
    """Resolve ``config`` against a schedule of ``(h, w)`` token-map sizes.

    Args:
        config: the configuration.
        schedule: per scale ``(h, w)``, coarse to fine.
        num_units: low-rank units the model has at the config's ``unit_blocks``.
        warn: emit :class:`NoAccelerationWarning` when nothing is accelerated (unless the
            config is the ``"none"`` preset, which accelerates nothing on purpose).

    Returns:
        one :class:`ScalePlan` per scale.
    """
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

    per_scale = {}
    for k, v in config.rank_ratios.items():
        per_scale[normalise_index(k, n, "rank_ratios key")] = (v, f"rank_ratios[{k}]")
    for k, row in config.rank_table.items():
        j = normalise_index(k, n, "rank_table key")
        per_scale.setdefault(j, (row[config.alpha], f"rank_table[{k}][{config.alpha}]"))
    outside = sorted(j for j in per_scale if j < start)
    if outside:
        raise ConfigError(f"rank ratios are given for scales {outside} before the refinement stage (starts at scale {start}); "
                          f"move refine_start earlier or drop those entries")

    plans = []
    for si, (h, w) in enumerate(schedule):
        if si in skips:
            plans.append(ScalePlan(si, (h, w), skip=True))
            continue
        if si < start:
            plans.append(ScalePlan(si, (h, w)))
            continue
        ratio, where = per_scale.get(si, (config.rank_ratio, "rank_ratio"))
        ranks = None
        if ratio is not None:
            ranks = tuple(rank_from_ratio(r, h * w) for r in ratios_for_units(ratio, num_units, where, config.resample_units))
        plans.append(ScalePlan(si, (h, w), branch=config.branch, ranks=ranks))

    first_run = next((p for p in plans if not p.skip), None)
    if first_run is None:
        raise ConfigError(f"skip={list(config.skip)} skips every scale of this {n}-scale schedule; nothing would be generated")
    if first_run.lowrank:
        raise ConfigError(f"scale {first_run.index} is the first scale run and is low-rank, but low-rank restoration needs "
                          f"an earlier scale's output; skip fewer early scales or start the refinement stage later")
    if warn and config.name != "none" and not any(p.accelerated for p in plans):
        full = [p.index for p in plans if p.lowrank]
        if not full:
            what = "every scale runs intact"
        elif config.projection == "sample":
            what = (f"scales {full} run the low-rank path at full rank (r = M, the representative tokens are all "
                    f"tokens), which reproduces the intact scales up to float rounding; the others run intact")
        else:
            what = (f"scales {full} run the low-rank path at full rank (r = M) through the {config.projection} "
                    f"projection, which mixes tokens: the output differs from the intact model's without "
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
        ranks = "" if p.ranks is None else " ranks=" + ",".join(map(str, p.ranks))
        lines.append(f"scale {p.index:2d} {p.hw[0]}x{p.hw[1]} M={p.M}: {p.mode}{ranks}")
    return "\n".join(lines)
