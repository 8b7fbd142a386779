"""The registry of reference-model builders (the tools' ``--model`` choices).

Each reference-model module names its own builders in a module-level ``BUILDERS`` dict;
:mod:`stagevar.models` collects them, so a new family adds its entry in its own file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import torch


@dataclass(frozen=True)
class ReferenceModel:
    """A built reference model and how to call it.

    ``call_kwargs``: the generation call's arguments other than the conditions, the seed and the
    sampling options (Infinity: the VAE, the schedule, per-scale CFG and temperature lists);
    ``encode``: prompts -> the model's text condition, or None for a class-conditional model.
    """

    description: str
    model: torch.nn.Module
    call_kwargs: dict
    encode: Optional[Callable] = None


@dataclass(frozen=True)
class ModelBuilder:
    """One entry of :data:`MODEL_BUILDERS`: ``build(shape, device, aspect, cfg)`` -> :class:`ReferenceModel`
    (``build(..., checkpoint=NAME_OR_PATH)`` for a builder that loads weights).

    ``shapes``: the shapes it accepts (empty: the model has one shape); ``aspects``: the aspect
    ratios it accepts (empty: fixed); ``checkpoints``: whether it loads trained weights, from a
    checkpoint of the user's choice too; ``tool_shapes``: per tool (``demo``, ``bench``,
    ``calibrate``, ``generate``) the shape it builds when none is given."""

    name: str
    summary: str
    shapes: Tuple[str, ...]
    aspects: Tuple[str, ...]
    build: Callable[..., ReferenceModel]
    available: Callable[[], bool] = lambda: True
    checkpoints: bool = False
    tool_shapes: Dict[str, str] = field(default_factory=dict)

    def shape_for(self, tool: str, shape: Optional[str]) -> Optional[str]:
        """``shape`` if given, else the one ``tool`` builds by default (None for a model of one shape)."""
        return (shape or self.tool_shapes[tool]) if self.shapes else None
