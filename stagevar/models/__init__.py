"""Reference models written from scratch with upstream attribute names, and the registry of their
builders (:data:`MODEL_BUILDERS`, the tools' ``--model`` choices), collected from each model
module's ``BUILDERS``: a new family's reference model registers itself in its own file."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Dict, Optional

import torch

from ._registry import ModelBuilder, ReferenceModel
from .infinity import (ASPECTS, BSQVAE, INFINITY_SHAPES, Infinity, InfinityBundle, TextEncoder, infinity_schedule,
                       reference_infinity)
from .pretrained import BUNDLED, load_pretrained, save_pretrained
from .star import STAR, STAR_SHAPES, STARBundle, reference_star
from .var import VAR, VAR_SHAPES, reference_var
from .vqvae import VQVAE

_ORDER = ("pretrained", "var")  # first in --model's choices and help; the others follow by name


def _collect() -> Dict[str, ModelBuilder]:
    found: Dict[str, ModelBuilder] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.update(getattr(module, "BUILDERS", {}))
    return {name: found[name] for name in sorted(found, key=lambda n: (n not in _ORDER, _ORDER.index(n) if n in _ORDER else 0, n))}


MODEL_BUILDERS: Dict[str, ModelBuilder] = _collect()


def build_reference(name: str, shape: Optional[str] = None, device: Optional[torch.device] = None,
                    aspect: str = "1:1", cfg: float = 4.0, checkpoint: Optional[str] = None) -> ReferenceModel:
    """Build the registered reference model ``name`` (see :data:`MODEL_BUILDERS`) with guidance ``cfg``;
    ``checkpoint``: for ``pretrained``, what :func:`load_pretrained` loads instead of the bundled model.

    Raises:
        ValueError: an unknown name, a shape or aspect the model does not have (naming the choices), or
            a checkpoint for a model with random weights.
    """
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODEL_BUILDERS)}")
    b = MODEL_BUILDERS[name]
    if b.shapes and shape not in b.shapes:
        raise ValueError(f"shape {shape!r} is not a {name} shape; choose one of {sorted(b.shapes)}")
    if not b.shapes and shape is not None:
        raise ValueError(f"{name} has one shape; pass shape=None")
    if b.aspects and aspect not in b.aspects:
        raise ValueError(f"aspect {aspect!r} is not one of {sorted(b.aspects)}")
    if checkpoint is not None:
        if not b.checkpoints:
            with_ckpt = " or ".join(n for n, m in MODEL_BUILDERS.items() if m.checkpoints)
            raise ValueError(f"{name} has random weights and loads no checkpoint; a checkpoint goes with {with_ckpt}")
        return b.build(shape, device, aspect, cfg, checkpoint=checkpoint)
    return b.build(shape, device, aspect, cfg)


__all__ = ["load_pretrained", "save_pretrained", "VAR", "VQVAE", "reference_var", "VAR_SHAPES", "Infinity", "InfinityBundle",
           "reference_infinity", "INFINITY_SHAPES", "infinity_schedule", "ASPECTS", "ReferenceModel", "ModelBuilder",
           "MODEL_BUILDERS", "build_reference", "STAR", "STAR_SHAPES", "STARBundle", "reference_star", "BUNDLED", "BSQVAE",
           "TextEncoder"]
