"""StageVARConfig: what to do in the fidelity-refinement stage, as plain data.

A config never names side lengths. Scales are indexed by their position in the model's
schedule (negative indices count from the end), so one config works at every resolution and
aspect ratio. It validates itself on construction, round-trips through JSON, and is deeply
immutable and hashable: its mappings are :class:`FrozenDict` and its per-unit lists tuples, so a
config (a preset included) can be shared between callers and used as a cache key.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

from ._files import atomic_path
from .lowrank import REDUCERS

BRANCHES = ("uncond", "cond", "both")
#: The format of :meth:`StageVARConfig.to_dict`. 1 (no ``"format"`` key): the reducer was given
#: as ``projection`` + ``selection``; 2: one ``reducer`` name and ``reduce_blocks``.
FORMAT = 2

Ratio = Union[float, Tuple[float, ...]]


class ConfigError(ValueError):
    """A StageVARConfig (or its combination with a model) that cannot be used as given."""


class FrozenDict(dict):
    """A read-only, hashable ``dict``: the mapping type of :class:`StageVARConfig`'s fields.

    It reads like a dict (``[]``, ``get``, ``in``, ``len``, iteration, ``items``, ``==`` with a
    plain dict) and is one (``isinstance(d, dict)``), but every mutating method raises
    ``TypeError``. Its hash is that of its items as a set, so equal mappings hash equal whatever
    their insertion order. ``copy()`` and ``|`` give a plain, mutable ``dict``.
    """

    __slots__ = ("_hash", "_sealed")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if getattr(self, "_sealed", False):
            self._refuse()
        super().__init__(*args, **kwargs)
        self._hash: Optional[int] = None
        self._sealed = True

    def _refuse(self, *_: Any, **__: Any) -> Any:
        raise TypeError("this mapping is read-only: a StageVARConfig (every preset included) is shared and hashable, so "
                        "its fields cannot change in place. Build a changed config instead, e.g. "
                        "cfg.replace(rank_ratios={**cfg.rank_ratios, -1: 0.1})")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __hash__(self) -> int:  # type: ignore[override]
        if self._hash is None:
            self._hash = hash(frozenset(self.items()))
        return self._hash

    def __reduce__(self):  # pickle and copy rebuild it through __init__, not item by item
        return type(self), (dict(self),)

    def copy(self) -> dict:
        """A plain, mutable ``dict`` with the same items."""
        return dict(self)

    @classmethod
    def fromkeys(cls, keys, value=None) -> "FrozenDict":  # type: ignore[override]
        return cls(dict.fromkeys(keys, value))


# ---------------------------------------------------------------------------------- validation
# Each helper checks one value and raises a ConfigError that names the field and says what to give.

def _kind(value: Any) -> str:
    """``'0.2' (a str)``: the value and its type, for error messages."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} (a {type(value).__name__})"


def _is_int(value: Any) -> bool:
    """An integer, numpy's included, but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    """A real number (int, float, numpy scalar, Fraction), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _float(value: numbers.Real) -> float:
    """``float(value)``, with integers too large for a float as infinity (so range checks reject them)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _optional_int(value: Any, name: str, what: str) -> Optional[int]:
    if value is None:
        return None
    if not _is_int(value):
        raise ConfigError(f"{name} must be {what} or None, got {_kind(value)}")
    return int(value)


def _choice(value: Any, name: str, choices: Tuple[str, ...], hint: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {choices}{hint}")
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {_kind(value)}")
    return value


def _ratio(value: Any, where: str, nested: bool = False) -> Ratio:
    """Normalise a rank ratio (one float, or a list of one float per unit) and check its range."""
    if isinstance(value, (list, tuple)):
        if nested:
            raise ConfigError(f"{where}: a list inside a list of per-unit ratios; give one float per unit, "
                              f"e.g. [0.1, 0.2], not [[0.1, 0.2]]")
        if not value:
            raise ConfigError(f"{where}: an empty list of per-unit ratios; give one float per unit or a single float")
        return tuple(_ratio(v, f"{where}[{i}]", nested=True) for i, v in enumerate(value))  # type: ignore[misc]
    if not _is_real(value):
        hint = "; write the number without quotes" if isinstance(value, (str, bytes)) else ""
        raise ConfigError(f"{where}: expected a float in (0, 1] or a list of them, got {_kind(value)}{hint}")
    value = _float(value)
    if not (0.0 < value <= 1.0):  # also false for NaN
        raise ConfigError(f"{where}: rank ratio {value} is outside (0, 1]; 1.0 means full rank, 0.1 keeps ~10% of tokens")
    return value


_INT_TEXT = re.compile(r"[+-]?[0-9]+")


def _scale_key(key: Any, where: str, text_ok: bool = True, noun: str = "scale key") -> int:
    """An integer scale index. ``text_ok``: also its decimal text, as JSON writes mapping keys."""
    if _is_int(key):
        return int(key)
    if isinstance(key, float) and key.is_integer():  # 2.0; never NaN, inf or 2.5
        return int(key)
    if text_ok and isinstance(key, str) and _INT_TEXT.fullmatch(key):
        return int(key)
    raise ConfigError(f"{where}: {noun} {_kind(key)} is not an integer scale index (negative counts from the end), "
                      f"e.g. -1 for the last scale")


def _alpha_key(key: Any, where: str) -> float:
    """An energy level used as a ``rank_table`` key: a number in (0, 1), or its text as JSON writes it."""
    value: Optional[float] = None
    if isinstance(key, str):
        try:
            value = float(key)
        except ValueError:
            pass
    elif _is_real(key):
        value = _float(key)
    if value is None or not (0.0 < value < 1.0):
        raise ConfigError(f"{where}: alpha key {_kind(key)} is not a number in (0, 1); key each row by the "
                          f"energy level it was measured at, e.g. {{0.96: [0.1, 0.2]}}")
    return value


def _mapping(value: Any, name: str, shape: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be a dict {shape} (or {{}} for none), got {_kind(value)}")
    return value


def _frozen(pairs: Iterable[Tuple[Any, Any, Any]], name: str) -> FrozenDict:
    """``(normalised key, given key, value)`` triples -> FrozenDict; two keys naming one entry is an error."""
    out: Dict[Any, Any] = {}
    given: Dict[Any, Any] = {}
    for key, raw, value in pairs:
        if key in out:
            raise ConfigError(f"{name}: keys {given[key]!r} and {raw!r} both name {key}; give each only once")
        out[key], given[key] = value, raw
    return FrozenDict(out)


def _rank_ratios(value: Any) -> FrozenDict:
    m = _mapping(value, "rank_ratios", "{scale_index: ratio or [ratio per unit]}")
    return _frozen(((_scale_key(k, "rank_ratios"), k, _ratio(v, f"rank_ratios[{k!r}]")) for k, v in m.items()),
                   "rank_ratios")


def _rank_table(value: Any) -> FrozenDict:
    m = _mapping(value, "rank_table", "{scale_index: {alpha: [ratio per unit]}}")

    def row(k: Any, per_alpha: Any) -> FrozenDict:
        if not isinstance(per_alpha, Mapping) or not per_alpha:
            raise ConfigError(f"rank_table[{k!r}] must be a non-empty dict {{alpha: [ratio per unit]}}, "
                              f"got {_kind(per_alpha)}")
        triples = []
        for a, v in per_alpha.items():
            ratios = _ratio(v, f"rank_table[{k!r}][{a!r}]")
            triples.append((_alpha_key(a, f"rank_table[{k!r}]"), a, ratios if isinstance(ratios, tuple) else (ratios,)))
        return _frozen(triples, f"rank_table[{k!r}]")

    return _frozen(((_scale_key(k, "rank_table"), k, row(k, v)) for k, v in m.items()), "rank_table")


def _skip(value: Any) -> Tuple[int, ...]:
    if _is_int(value):
        value = (value,)
    if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(value, Iterable):
        raise ConfigError(f"skip must be a list of integer scale indices, e.g. [-2, -1] ([] to skip nothing), "
                          f"got {_kind(value)}")
    return tuple(sorted({_scale_key(s, "skip", text_ok=False, noun="entry") for s in value}))


def _reduce_blocks(value: Any) -> Optional[Tuple[float, float]]:
    if value is None:
        return None
    pair = () if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable) else tuple(value)
    if len(pair) != 2 or not all(_is_real(v) for v in pair):
        raise ConfigError(f"reduce_blocks must be None or (lo, hi), two fractions of the depth with 0 <= lo < hi <= 1, "
                          f"e.g. (0.1, 0.85) for the middle blocks; got {_kind(value)}")
    lo, hi = (_float(v) for v in pair)
    if not 0.0 <= lo < hi <= 1.0:
        raise ConfigError(f"reduce_blocks=({lo}, {hi}): give 0 <= lo < hi <= 1 (fractions of the depth), e.g. (0.1, 0.85)")
    return (lo, hi)


def _upgrade(d: Mapping) -> dict:
    """A :meth:`StageVARConfig.to_dict` of any format as this format's fields (without ``format``)."""
    d = dict(d)
    version = d.pop("format", 1)
    if not _is_int(version) or not 1 <= version <= FORMAT:
        raise ConfigError(f"config format {version!r} is not one this stagevar reads (1..{FORMAT}); a newer stagevar "
                          f"wrote it: upgrade stagevar, or write the config again with this one")
    if version == 1 and ("projection" in d or "selection" in d):
        projection, selection = d.pop("projection", "gaussian"), d.pop("selection", "norm")
        if selection == "mean_distance" and projection == "sample":
            d["reducer"] = "fastvar"
        elif selection == "norm":
            d["reducer"] = projection
        else:
            raise ConfigError(f"a format-1 config with projection={projection!r} and selection={selection!r}: no reducer "
                              f"combines them; use reducer='fastvar' (the farthest-from-mean tokens themselves) or "
                              f"reducer={projection!r} (norm-sampled representatives)")
    return d


@dataclass(frozen=True)
class StageVARConfig:
    """How to run the refinement stage of a next-scale-prediction model.

    Deeply immutable and hashable: ``rank_ratios`` and ``rank_table`` become :class:`FrozenDict`
    and per-unit ratio lists tuples on construction, so a config can be shared (presets are) and
    used as a dict key; change one with :meth:`replace`. Every field is checked on construction;
    a value of the wrong type or range raises :class:`ConfigError` naming the field.

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
        reducer: how a low-rank unit computes on fewer tokens, a registered
            :class:`~stagevar.lowrank.Reducer`: ``"gaussian"`` (random projection with
            representative token restoration, the paper), ``"orthogonal"`` (an orthonormalised
            Gaussian), ``"sample"`` (run the representative tokens themselves) or ``"fastvar"``
            (FastVAR's pruning: keep the tokens farthest from the token-map mean, fill the rest
            from the previous scale's output).
        reduce_blocks: ``(lo, hi)`` fractions of the model's depth: only units whose blocks lie
            in ``round(lo * depth) .. round(hi * depth) - 1`` are reduced, the others run intact
            (FastVAR prunes the middle blocks). ``None``: every unit.
        skip: scale indices not run at all (opt-in; the image is decoded from what was
            generated). Never part of a default preset. Stored sorted, without repeats.
        cache_condition: compute each block's condition modulation (VAR's AdaLN ``ada_lin``)
            once per call instead of once per scale. Exact (bit-identical); it saves a weight
            read per block per scale, which matters when small scales are memory-bound.
        seed: extra seed mixed into the reducer's generator. Projection draws are
            seeded from the call's ``g_seed`` (if given) and this value; they never touch the
            sampling generator.
        name: a label carried into reports.
    """

    refine_start: Optional[int] = -2
    branch: str = "uncond"
    rank_ratio: Optional[Ratio] = None
    rank_ratios: Mapping[int, Ratio] = field(default_factory=FrozenDict)
    rank_table: Mapping[int, Mapping[float, Tuple[float, ...]]] = field(default_factory=FrozenDict)
    alpha: Optional[float] = None
    unit_blocks: Optional[int] = None
    resample_units: bool = False
    reducer: str = "gaussian"
    reduce_blocks: Optional[Tuple[float, float]] = None
    skip: Tuple[int, ...] = ()
    cache_condition: bool = True
    seed: int = 0
    name: str = "custom"

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("refine_start", _optional_int(self.refine_start, "refine_start",
                                           "an integer scale index (e.g. -2 for the last two scales)"))
        set_("branch", _choice(self.branch, "branch", BRANCHES, "; 'uncond' drops the condition as in the paper"))
        set_("reducer", _choice(self.reducer, "reducer", tuple(sorted(REDUCERS)),
                                "; 'gaussian' is the paper's random projection"))
        set_("reduce_blocks", _reduce_blocks(self.reduce_blocks))
        if self.rank_ratio is not None:
            set_("rank_ratio", _ratio(self.rank_ratio, "rank_ratio"))
        set_("rank_ratios", _rank_ratios(self.rank_ratios))
        set_("rank_table", _rank_table(self.rank_table))
        if self.alpha is not None:
            if not _is_real(self.alpha) or not (0.0 < _float(self.alpha) < 1.0):
                raise ConfigError(f"alpha must be an energy level in (0, 1), e.g. 0.96, or None; got {_kind(self.alpha)}")
            set_("alpha", _float(self.alpha))
            if not self.rank_table:
                raise ConfigError("alpha is set but rank_table is empty: give a rank_table (see stagevar.calibrate) or use rank_ratio")
            missing = [k for k, row in self.rank_table.items() if self.alpha not in row]
            if missing:
                have = sorted({a for row in self.rank_table.values() for a in row})
                raise ConfigError(f"alpha={self.alpha} has no entry in rank_table for scales {missing}; alphas present: {have}")
        elif self.rank_table:
            raise ConfigError("rank_table is given but alpha is not: set alpha to pick a column (e.g. alpha=0.96)")
        set_("unit_blocks", _optional_int(self.unit_blocks, "unit_blocks", "a positive integer (blocks per low-rank unit)"))
        if self.unit_blocks is not None and self.unit_blocks < 1:
            raise ConfigError(f"unit_blocks must be a positive integer (blocks per low-rank unit) or None, got {self.unit_blocks}")
        set_("resample_units", _flag(self.resample_units, "resample_units"))
        set_("skip", _skip(self.skip))
        set_("cache_condition", _flag(self.cache_condition, "cache_condition"))
        if not _is_int(self.seed):
            raise ConfigError(f"seed must be an integer, got {_kind(self.seed)}")
        set_("seed", int(self.seed))
        if not isinstance(self.name, str):
            raise ConfigError(f"name must be a string (a label for reports), got {_kind(self.name)}")
        if self.refine_start is None and (self.rank_ratio is not None or self.rank_ratios or self.rank_table):
            raise ConfigError("low-rank settings are given but refine_start is None: set refine_start to the first refinement scale")

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        """A JSON-ready dict of plain, mutable values (scale and alpha keys become strings), with its
        ``"format"`` (:data:`FORMAT`)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["rank_ratio"] = list(self.rank_ratio) if isinstance(self.rank_ratio, tuple) else self.rank_ratio
        d["rank_ratios"] = {str(k): (list(v) if isinstance(v, tuple) else v) for k, v in self.rank_ratios.items()}
        d["rank_table"] = {str(k): {repr(a): list(v) for a, v in row.items()} for k, row in self.rank_table.items()}
        d["skip"] = list(self.skip)
        d["reduce_blocks"] = None if self.reduce_blocks is None else list(self.reduce_blocks)
        return {"format": FORMAT, **d}

    @classmethod
    def from_dict(cls, d: Mapping) -> "StageVARConfig":
        """Inverse of :meth:`to_dict`, for every format so far (a dict without ``"format"`` is
        format 1, whose ``projection`` and ``selection`` name the reducer); unknown keys are an
        error that names them."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"expected a JSON object for StageVARConfig, got {type(d).__name__}")
        d = _upgrade(d)
        _check_field_names(d, "StageVARConfig field(s)")
        return cls(**d)

    def to_json(self, indent: Optional[int] = 2) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: Union[str, bytes]) -> "StageVARConfig":
        """Inverse of :meth:`to_json`; text that is not JSON raises :class:`ConfigError`."""
        if not isinstance(text, (str, bytes, bytearray)):
            raise ConfigError(f"from_json takes JSON text (str or bytes), got {type(text).__name__}; "
                              f"use StageVARConfig.from_dict for a dict")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ConfigError(f"not valid JSON for a StageVARConfig: {e}") from None
        return cls.from_dict(data)

    def save(self, path) -> None:
        """Write :meth:`to_json` to ``path`` (to a temporary name, then renamed: never half-written)."""
        with atomic_path(os.fspath(path)) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(self.to_json() + "\n")

    @classmethod
    def load(cls, path) -> "StageVARConfig":
        """Read a config written by :meth:`save`; errors name the file."""
        with open(path, "rb") as f:
            raw = f.read()
        try:
            return cls.from_json(raw)
        except ConfigError as e:
            raise ConfigError(f"{os.fspath(path)}: {e}") from None

    def replace(self, **changes: Any) -> "StageVARConfig":
        """A copy with some fields changed (validated again); unknown field names raise :class:`ConfigError`."""
        _check_field_names(changes, "StageVARConfig.replace field(s)")
        return dataclasses.replace(self, **changes)


def _check_field_names(names: Iterable, what: str) -> None:
    known = {f.name for f in dataclasses.fields(StageVARConfig)}
    unknown = sorted((repr(k) for k in names if k not in known))
    if unknown:
        raise ConfigError(f"unknown {what} {', '.join(unknown)}; known fields: {sorted(known)}")
