"""Model-family adapters and the lookup from a model object to its adapter.

Each family is one module here (``var``, ``infinity``, ``star``, ...): the adapters it defines are
found by looking through the package (every module not named with a leading underscore, and not
``base``), so adding a family touches its own file only.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any, List, Type

from .base import Adapter, UnsupportedModelError


def _families() -> List[Type[Adapter]]:
    found: List[Type[Adapter]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found += [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                  if issubclass(cls, Adapter) and cls.__module__ == module.__name__ and cls.family != "?"]
    return found


ADAPTERS: List[Type[Adapter]] = _families()

from .infinity import InfinityAdapter  # noqa: E402 -- short names for the built-in families (found above)
from .star import STARAdapter  # noqa: E402
from .var import VARAdapter  # noqa: E402


def register_adapter(cls: Type[Adapter], first: bool = False) -> Type[Adapter]:
    """Make ``accelerate`` recognise a model family: ``cls`` is tried after the built-in families
    (or before them, ``first=True``) on the attributes it ``requires``. Usable as a decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise TypeError(f"register_adapter expects an Adapter subclass, got {cls!r}")
    if not isinstance(first, bool):
        raise TypeError(f"register_adapter: first={first!r}; give True (try it before the built-in families) or False")
    required = cls.required
    if not required or isinstance(required, str) or not all(isinstance(n, str) and n for n in required):
        raise TypeError(f"register_adapter: {cls.__name__}.required={required!r}; give a tuple of the attribute names "
                        f"(dotted paths) a model of the family has, e.g. ('blocks', 'head') -- an adapter that "
                        f"requires nothing would claim every model")
    if not isinstance(cls.entry_point, str) or not cls.entry_point:
        raise TypeError(f"register_adapter: {cls.__name__}.entry_point={cls.entry_point!r}; give the name of the "
                        f"model's generation method")
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
