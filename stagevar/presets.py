"""Named configs. Every preset is keyed by position in the schedule, never by side length."""
from __future__ import annotations

from typing import Dict, List

from .config import ConfigError, StageVARConfig

# VAR (class-conditional, 256px schedule ...13, 16 / 512px ...24, 32): the paper's recipe applied
# to the last two scales -- unconditional branch only, random projection + representative
# token restoration per block (the STAR/HART granularity). No offline rank table exists for
# VAR; the ratios are the per-scale means of the paper's Infinity-2B alpha=0.96 table for its
# last two scales (0.157 and 0.049), not a measurement on VAR.
_VAR_RATIOS = {-2: 0.16, -1: 0.05}


def _var(depth: int) -> StageVARConfig:
    return StageVARConfig(refine_start=-2, branch="uncond", rank_ratios=dict(_VAR_RATIOS), unit_blocks=1,
                          projection="gaussian", name=f"var-d{depth}")


_PRESETS: Dict[str, StageVARConfig] = {
    "none": StageVARConfig(refine_start=None, branch="both", cache_condition=False, name="none"),
    **{f"var-d{d}": _var(d) for d in (16, 20, 24, 30, 36)},
}


def presets() -> List[str]:
    """Names accepted by :func:`preset`."""
    return sorted(_PRESETS)


def preset(name: str) -> StageVARConfig:
    """The named :class:`StageVARConfig` (``"none"`` runs stagevar's loop and accelerates nothing)."""
    try:
        return _PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(presets())}") from None
