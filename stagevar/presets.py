"""The one namespace of named configs: ``stagevar.accelerate(model, NAME)``, ``stagevar.preset(NAME)``
and the tools' ``--config`` / ``--methods`` all resolve a name here, to the same config.

- **Presets**: the paper's and the authors' recipes per family (``var-d16``, ``infinity-2b``,
  ``star-d30``, ...), the bundled model's (``stagevar-tiny-var``) and ``none``.
- **Named methods**, the ablations and peers: ``fastvar`` (FastVAR's cached token pruning),
  ``skip-last-N``, ``uncond-last-N``, ``cond-last-N``; and, relative to a model's own family
  preset, ``cfg-only`` (its branch cut without low rank) and ``lowrank-only`` (its low rank with
  both CFG branches) -- these two need the model: ``preset("cfg-only", model)``.

Every config is keyed by position in the schedule, never by side length, and is one shared,
deeply immutable :class:`StageVARConfig`: derive a variant with ``preset(name).replace(...)``.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, List, Optional, Tuple

from .config import ConfigError, FrozenDict, StageVARConfig

# VAR (class-conditional, 256px schedule ...13, 16 / 512px ...24, 32): the paper's recipe applied
# to the last two scales -- unconditional branch only, random projection + representative
# token restoration per block (the STAR/HART granularity). No offline rank table exists for
# VAR; the ratios are the per-scale means of the paper's Infinity-2B alpha=0.96 table for its
# last two scales (0.157 and 0.049), not a measurement on VAR.
_VAR_RATIOS = FrozenDict({-2: 0.16, -1: 0.05})


def _var(depth: int) -> StageVARConfig:
    return StageVARConfig(refine_start=-2, branch="uncond", rank_ratios=_VAR_RATIOS, unit_blocks=1,
                          reducer="gaussian", name=f"var-d{depth}")


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
    return StageVARConfig(refine_start=-3, branch="uncond", alpha=0.96, reducer="gaussian", resample_units=True,
                          rank_table={k: {0.96: v} for k, v in _INF_TABLE_096.items()}, name=name)


def _infinity_paper(name: str) -> StageVARConfig:
    return StageVARConfig(refine_start=-3, branch="uncond", alpha=0.96, reducer="gaussian", resample_units=True,
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
                          reducer="gaussian", resample_units=True, name=name)


# HART (text-to-image; HART-0.7B: 24 blocks, C = 1536, 1024^2 schedule ...36, 48, 64, the last scale
# MaskGIT + diffusion head): the authors' released settings -- the unconditional branch on the last
# two scales (their cfg list is 0 there and the loop keeps rows [B:]), RP+RTR per block on the last
# one at their alpha = 0.96 table: rank_ratio['0.96']['scale64'] in hart/hart/utils/rank_ratio.py of
# github.com/sen-mao/FasterVAR, commit 3183ebbbe569035afd4c5395a202c17bdfa91a34 (24 blocks, copied
# verbatim below). Their rank is int(ratio * min(M, C)) + 1: at 1024^2 M = 4096 and C = 1536, so the
# ratio of M is ratio * 1536 / 4096 (exact at 1024^2, as for STAR).
_HART_096_OF_MIN_MC = (
    0.018744562601806715, 0.023373292425588648, 0.04417770342810599, 0.09879463294091506, 0.1585374671442322,
    0.2074957426329037, 0.2318480559566116, 0.2366069362690658, 0.25318724085591604, 0.26998995816674004,
    0.29325045350214707, 0.32766253193025374, 0.35949184621649616, 0.39399502998667213, 0.40009417110913664,
    0.4096064364911891, 0.4172558145453881, 0.4268221646860662, 0.42552817960536066, 0.3918371348844954,
    0.3481849502073154, 0.2754036400488672, 0.2678144204427658, 0.3102232341181697)
_HART_1024_M, _HART_07B_C = 64 * 64, 1536


# "hart-0.7b": the paper's recipe for HART (one branch on the last two scales, RP+RTR per block on the
# last) with ranks from stagevar's own calibration of the reference model at HART-0.7B's width on the
# 1024^2 schedule (2 blocks, random weights): `stagevar calibrate --model hart --shape 0.7b-cpu
# --prompts "a red fox in the snow" "a lighthouse on a cliff at dusk" --seeds 0 --no-sweep --cfg 4.5
# --top-k 0 --top-p 0` measured, at alpha = 0.96 on the last scale, 0.01367 and 0.01123 of min(M, C)
# = 1536, i.e. 0.005127 and 0.004211 of M = 4096 (about 21 and 17 tokens), resampled over the depth.
# A random-weight model's ranks, not a trained HART's: far lower than the authors' table, so the
# family default is hart-0.7b-paper; calibrate your checkpoint for a measured recipe.
_HART_REFERENCE_096_OF_M = (0.01367 * 1536 / 4096, 0.01123 * 1536 / 4096)


def _hart(name: str, last_scale_ratios) -> StageVARConfig:
    return StageVARConfig(refine_start=-2, branch="uncond", rank_ratios={-1: tuple(last_scale_ratios)}, unit_blocks=1,
                          reducer="gaussian", resample_units=True, name=name)


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
    "hart-0.7b": _hart("hart-0.7b", _HART_REFERENCE_096_OF_M),
    "hart-0.7b-paper": _hart("hart-0.7b-paper", (q * _HART_07B_C / _HART_1024_M for q in _HART_096_OF_MIN_MC)),
}


# FastVAR (csguoh/FastVAR) as a config: at the last two scales, in the middle blocks (from
# round(0.1 * depth) to round(0.85 * depth)), keep the 60% / 50% of tokens farthest from the
# token-map mean and fill the others from the block's previous-scale output, upsampled. Both CFG
# branches run; nothing is skipped (skipping is its own method).
_PRESETS["fastvar"] = StageVARConfig(refine_start=-2, branch="both", rank_ratios={-2: 0.6, -1: 0.5}, unit_blocks=1,
                                     reducer="fastvar", reduce_blocks=(0.1, 0.85), name="fastvar")

# FastVAR's HART policy (csguoh/FastVAR HART/hart/modules/networks/fastvar_utils.py, commit 9e93f7a):
# at sides 48 and 64 -- HART's last two scales at 1024^2 -- prune 50% and 75% of the tokens (keep
# 0.5 and 0.25, the farthest from the token-map mean, per CFG row) in every block, both CFG branches
# on. Two differences of the reducer surface, stated: FastVAR re-selects before each sublayer
# (attention, MLP) and fills the pruned positions from the cached sublayer outputs of side 36
# (upsampled, area); here a block is the unit and the fill is the block's output at the previous
# scale (area), as the `fastvar` method does for the other families.
_PRESETS["fastvar-hart"] = StageVARConfig(refine_start=-2, branch="both", rank_ratios={-2: 0.5, -1: 0.25},
                                          unit_blocks=1, reducer="fastvar", name="fastvar-hart")

#: Names of the form PREFIX + N (N >= 1): the last N scales skipped, or run on one CFG branch at full rank.
PATTERNS = ("skip-last-", "uncond-last-", "cond-last-")


def _last_n(name: str, prefix: str) -> StageVARConfig:
    text = name[len(prefix):]
    n = int(text) if text.isdigit() else 0
    if n < 1:
        raise ConfigError(f"config {name!r}: write {prefix}N with N >= 1, e.g. {prefix}2")
    if prefix == "skip-last-":
        return StageVARConfig(refine_start=None, skip=tuple(range(-n, 0)), name=name)
    return StageVARConfig(refine_start=-n, branch=prefix.split("-")[0], name=name)


# Relative to the model's family preset (``default``): the branch cut alone, or the low rank alone.
_RELATIVE: Dict[str, Callable[[StageVARConfig, str], StageVARConfig]] = {
    "cfg-only": lambda cfg, name: cfg.replace(rank_ratio=None, rank_ratios={}, rank_table={}, alpha=None, name=name),
    "lowrank-only": lambda cfg, name: cfg.replace(branch="both", name=name),
}

#: The unpatched call in the tools; not a config (``preset("baseline")`` says so).
BASELINE_NAME = "baseline"


# What the tools compare with a model's family preset by default: its relatives, then the ablations.
_RELATED: Dict[str, Tuple[str, ...]] = {
    "infinity-2b": ("infinity-2b-paper",), "infinity-8b": ("infinity-8b-paper",),  # the authors' released behaviour
    "star-d30": ("star-d16",), "star-d16": ("star-d30",),
    "hart-0.7b-paper": ("hart-0.7b", "fastvar-hart"),
}
_ABLATIONS = ("cfg-only", "lowrank-only", "fastvar", "skip-last-2")


def compared(default: str, carried: Optional[str] = None) -> List[str]:
    """The config names a tool compares by default for a model whose family preset is ``default``:
    it, its relatives, the config the model carries (``carried``, when it is a name here), then the
    ablations (``cfg-only``, ``lowrank-only``, ``fastvar``, ``skip-last-2``)."""
    names = [default, *_RELATED.get(default, ())]
    if carried in _PRESETS and carried not in names:
        names.append(carried)
    return names + list(_ABLATIONS)


def preset_names() -> List[str]:
    """The names :func:`preset` accepts besides the patterns (:data:`PATTERNS`, e.g. ``skip-last-2``):
    the presets and named methods, ``cfg-only`` and ``lowrank-only`` (which take a model) last."""
    return sorted(_PRESETS) + sorted(_RELATIVE)


def preset(name: str, model: Any = None) -> StageVARConfig:
    """The config called ``name`` (see the module's list; ``"none"`` runs stagevar's loop and
    accelerates nothing).

    Args:
        name: a preset, a named method or a pattern (``skip-last-2``).
        model: the model a relative name (``cfg-only``, ``lowrank-only``) is taken against: its
            family preset (the one ``stagevar.accelerate(model)`` picks without a config).

    Every call returns an immutable config; change a copy with ``.replace(...)``.

    Raises:
        ConfigError: an unknown name (with the close matches), or a relative name without a model.
    """
    return named(name, None if model is None else lambda: _family_default(model))


def named(name: str, family_default: Optional[Callable[[], str]]) -> StageVARConfig:
    """:func:`preset` for callers that know the model's family preset (``family_default()`` gives
    its name; None when no model is at hand)."""
    if not isinstance(name, str):
        raise ConfigError(f"a config name must be a string (a preset or named method, e.g. 'var-d16' or 'fastvar'), "
                          f"got {type(name).__name__}")
    if name in _PRESETS:
        return _PRESETS[name]
    if name in _RELATIVE:
        if family_default is None:
            raise ConfigError(f"config {name!r} is taken from a model's family preset: pass the model, "
                              f"stagevar.preset({name!r}, model), or call stagevar.accelerate(model, {name!r})")
        return _RELATIVE[name](_PRESETS[family_default()], name)
    for prefix in PATTERNS:
        if name.startswith(prefix):
            return _last_n(name, prefix)
    if name == BASELINE_NAME:
        raise ConfigError("'baseline' is the model's own unpatched call, not a config: generate without "
                          "stagevar.accelerate (or call stagevar.restore(model))")
    close = difflib.get_close_matches(name, sorted(_PRESETS) + sorted(_RELATIVE) + [p + "2" for p in PATTERNS], n=3)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    file_hint = (" To load a config file, pass stagevar.StageVARConfig.load(path)." if name.endswith(".json") else "")
    names = ", ".join(preset_names() + [p + "N" for p in PATTERNS])
    raise ConfigError(f"unknown config {name!r}; {hint}names: {names}.{file_hint}")


def _family_default(model: Any) -> str:
    from .adapters import adapter_for  # the adapters name their family's preset

    return adapter_for(model).default_preset
