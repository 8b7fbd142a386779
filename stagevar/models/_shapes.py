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


def check_kv_layout(layout: str) -> None:
    """The KV-cache layouts of upstream's attention: SDPA's and flash/xformers'."""
    if layout not in ("BHLc", "BLHc"):
        raise ValueError(f"kv_layout must be 'BHLc' (SDPA) or 'BLHc' (flash/xformers), got {layout!r}")


def vqvae_for(cfg: dict):
    """The reference VQVAE of a VAR-style shape config (``vocab_size``, ``z_channels``, ``ch``,
    ``num_down``, ``patch_nums``), drawn from the current RNG."""
    from .vqvae import VQVAE

    return VQVAE(vocab_size=cfg["vocab_size"], z_channels=cfg["z_channels"], ch=cfg["ch"], num_down=cfg["num_down"],
                 v_patch_nums=tuple(cfg["patch_nums"]))
