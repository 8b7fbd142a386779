"""The named shapes of the reference models: one rule for every family's ``reference_*(shape, **overrides)``."""
from __future__ import annotations

from typing import Dict


def shape_config(shapes: Dict[str, dict], defaults: dict, shape: str, overrides: dict, what: str) -> dict:
    """``defaults`` updated by ``shapes[shape]`` then ``overrides``; unknown shapes and fields say what exists."""
    if shape not in shapes:
        raise ValueError(f"unknown {what} shape {shape!r}; choose one of {sorted(shapes)}")
    cfg = {**defaults, **shapes[shape]}
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown reference_{what.lower()} override(s) {unknown}; known: {sorted(cfg)}")
    cfg.update(overrides)
    return cfg
