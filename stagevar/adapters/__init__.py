"""Model-family adapters and the lookup from a model object to its adapter."""
from __future__ import annotations

from typing import Any, List, Type

from .base import Adapter, UnsupportedModelError
from .infinity import InfinityAdapter
from .star import STARAdapter
from .var import VARAdapter

ADAPTERS: List[Type[Adapter]] = [VARAdapter, InfinityAdapter, STARAdapter]


def register_adapter(cls: Type[Adapter], first: bool = False) -> Type[Adapter]:
    """Make ``accelerate`` recognise a model family: ``cls`` is tried after the built-in families
    (or before them, ``first=True``) on the attributes it ``requires``. Usable as a decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise TypeError(f"register_adapter expects an Adapter subclass, got {cls!r}")
    if cls in ADAPTERS:
        ADAPTERS.remove(cls)
    ADAPTERS.insert(0, cls) if first else ADAPTERS.append(cls)
    return cls


def adapter_for(model: Any) -> Adapter:
    """The adapter of the first family whose attribute names ``model`` has.

    Raises:
        UnsupportedModelError: naming, per known family, the attributes the object lacks.
    """
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"stagevar.accelerate expects a loaded torch.nn.Module (a VAR model instance), got {type(model).__name__}")
    reasons = []
    for cls in ADAPTERS:
        missing = cls.missing(model)
        if not missing:
            return cls(model)  # may still refuse a variant it does not support
        reasons.append(f"{cls.family}: missing {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    raise UnsupportedModelError(
        f"{type(model).__name__} is not a model stagevar supports (FoundationVision VAR, Infinity or Davinci-XLab STAR interface). "
        + "; ".join(reasons) + ". Pass the transformer itself (e.g. the VAR returned by build_vae_var, or the Infinity transformer), not a wrapper.")


__all__ = ["Adapter", "UnsupportedModelError", "register_adapter", "VARAdapter", "InfinityAdapter", "STARAdapter", "adapter_for", "ADAPTERS"]
