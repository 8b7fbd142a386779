"""Named configs. Every preset is keyed by position in the schedule, never by side length.

A preset is one shared :class:`StageVARConfig`; configs are deeply immutable, so no caller can
change what the next one gets. Derive a variant with ``preset(name).replace(...)``.
"""
from __future__ import annotations

from typing import Dict, List

from .config import ConfigError, FrozenDict, StageVARConfig

# VAR (class-conditional, 256px schedule ...13, 16 / 512px ...24, 32): the paper's recipe applied
# to the last two scales -- unconditional branch only, random projection + representative
# token restoration per block (the STAR/HART granularity). No offline rank table exists for
# VAR; the ratios are the per-scale means of the paper's Infinity-2B alpha=0.96 table for its
# last two scales (0.157 and 0.049), not a measurement on VAR.
_VAR_RATIOS = FrozenDict({-2: 0.16, -1: 0.05})


def _var(depth: int) -> StageVARConfig:
    return StageVARConfig(refine_start=-2, branch="uncond", rank_ratios=_VAR_RATIOS, unit_blocks=1,
                          projection="gaussian", name=f"var-d{depth}")


# Infinity (text-to-image, 13-scale 1024^2 schedule ...32, 40, 48, 64): the paper's recipe on
# the last three scales -- unconditional branch only, RP+RTR per block chunk at the measured
# Infinity-2B alpha = 0.96 rank table (8 chunks). Keyed by position (-3, -2, -1), so they run at
# any resolution and aspect ratio. Rule for other depths: a model with other than 8 chunks gets
# the table resampled by linear interpolation over relative chunk position (resample_units).
_INF_TABLE_096 = FrozenDict({
    -3: (.0168, .1365, .2104, .2503, .2559, .1979, .1570, .1909),  # side 40 at 1024^2
    -2: (.0134, .1173, .1894, .2220, .2346, .1828, .1339, .1631),  # side 48
    -1: (.0082, .0544, .0832, .0665, .0567, .0297, .0383, .0557),  # side 64
})


def _infinity(name: str) -> StageVARConfig:
    return StageVARConfig(refine_start=-3, branch="uncond", alpha=0.96, projection="gaussian", resample_units=True,
                          rank_table={k: {0.96: v} for k, v in _INF_TABLE_096.items()}, name=name)


def _infinity_paper(name: str) -> StageVARConfig:
    return StageVARConfig(refine_start=-3, branch="uncond", alpha=0.96, projection="gaussian", resample_units=True,
                          rank_table={-3: {0.96: _INF_TABLE_096[-3]}}, skip=(-2, -1), name=name)


# The bundled trained model (stagevar.models.load_pretrained("stagevar-tiny-var"), 9 scales up to
# 12x12): chosen from its calibration and measured quality, not from the paper. Calibration finds
# its stages converge only at the last scale and its features there are not low rank (about 0.58 of
# min(M, d) at alpha = 0.96, against the paper's <= 0.26), and RP+RTR at any rank costs it class
# consistency; so: the conditional branch alone on the last scale, full rank (BENCHMARKS.md).
_TINY_VAR = StageVARConfig(refine_start=-1, branch="cond", name="stagevar-tiny-var")

# STAR (text-to-image, VAR's loop; star-1024 = d30 on 14 scales ...36, 48, 64): the authors' recipe --
# unconditional branch on the last two scales, RP+RTR per block on the last one at their per-block
# alpha = 0.96 table: rank_ratio['0.96']['scale64'] in STAR-T2I/models/rank_ratio.py of
# github.com/sen-mao/FasterVAR, commit 8c783d720afc58eb28b2312fb6a220b438ab257c (30 blocks, copied
# verbatim below). Their rank is int(ratio * min(M, C)) + 1, not of M: at 1024^2 the last scale has
# M = 4096 tokens and STAR-d30 C = 1920, so the ratio of M is ratio * 1920 / 4096. That conversion
# is exact at 1024^2 only (the same ranks, block by block, as the authors' code); at 256^2 and 512^2
# (M <= C) their ranks would be ratio * M, 4096 / 1920 times those of this preset.
_STAR_D30_096_OF_MIN_MC = (
    0.01514565000752134, 0.027469140154933933, 0.0694253675917569, 0.10347966493682328, 0.1709284042193136,
    0.1859111762936222, 0.1747999868381468, 0.16437497649669042, 0.15378697070547534, 0.15547897393953036,
    0.16531299356949455, 0.18198765136131168, 0.19308638406287632, 0.19007102700060197, 0.1761887973826715,
    0.16163907378158854, 0.14933180091756923, 0.13830275552797847, 0.13994469671329687, 0.1189034766095067,
    0.10620017298435634, 0.08757650327166047, 0.07218406851684724, 0.060258489395306786, 0.05025183795878453,
    0.04206140474578826, 0.035359201075511486, 0.029099682235258766, 0.023792870036101078, 0.019681671179301998)
_STAR_1024_M, _STAR_D30_C = 64 * 64, 1920


def _star(name: str, last_scale_ratios) -> StageVARConfig:
    # resample_units: exact per block on the 30-block model; another depth (or unit_blocks) gets the
    # table linearly interpolated over relative block position.
    return StageVARConfig(refine_start=-2, branch="uncond", rank_ratios={-1: tuple(last_scale_ratios)}, unit_blocks=1,
                          projection="gaussian", resample_units=True, name=name)


_PRESETS: Dict[str, StageVARConfig] = {
    "none": StageVARConfig(refine_start=None, branch="both", cache_condition=False, name="none"),
    **{f"var-d{d}": _var(d) for d in (16, 20, 24, 30, 36)},
    "stagevar-tiny-var": _TINY_VAR,
    "infinity-2b": _infinity("infinity-2b"),
    "infinity-8b": _infinity("infinity-8b"),
    # The authors' released Infinity behaviour: condition dropped on the last three scales, RP+RTR
    # on the first of them, and the last two scales skipped (the image is decoded from the codes
    # summed up to the third-to-last scale). Scale skipping is on in these presets, and they say so.
    "infinity-2b-paper": _infinity_paper("infinity-2b-paper"),
    # The same released behaviour on Infinity-8B (the authors run the 8-chunk table there too).
    "infinity-8b-paper": _infinity_paper("infinity-8b-paper"),
    "star-d30": _star("star-d30", (q * _STAR_D30_C / _STAR_1024_M for q in _STAR_D30_096_OF_MIN_MC)),
    # No table is published for STAR-d16 (star-256: C = 1024, last scale 16 x 16): the d30 table
    # resampled over depth (16 blocks), its ratios used as ratios of M -- for d16 at 256^2 and 512^2
    # min(M, C) = M, so that is what the authors' rule would compute from it. Not a measurement on d16.
    "star-d16": _star("star-d16", _STAR_D30_096_OF_MIN_MC),
}


def presets() -> List[str]:
    """Names accepted by :func:`preset`."""
    return sorted(_PRESETS)


def preset(name: str) -> StageVARConfig:
    """The named :class:`StageVARConfig` (``"none"`` runs stagevar's loop and accelerates nothing).

    Every call returns the same immutable config; change a copy with ``.replace(...)``.
    """
    if not isinstance(name, str):
        raise ConfigError(f"a preset name must be a string, one of: {', '.join(presets())}; got {type(name).__name__}")
    try:
        return _PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(presets())}") from None
