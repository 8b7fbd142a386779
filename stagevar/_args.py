"""Checks of the public functions' arguments: each error names the function, the argument, what was
given and what to pass, and is raised before any work (so nothing is left half done)."""
from __future__ import annotations

import numbers
from typing import Any, Callable, List, Optional


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def whole(where: str, name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as a plain ``int`` of at least ``minimum`` (numpy integers accepted; bools, floats
    and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        least = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        raise ValueError(f"{where}: {name}={_shown(value)}; give {least}")
    return int(value)


def optional_whole(where: str, name: str, value: Any, minimum: int = 1) -> Optional[int]:
    return None if value is None else whole(where, name, value, minimum)


def flag(where: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}: {name}={_shown(value)}; give True or False")
    return value


def items(where: str, name: str, value: Any, what: str) -> List[Any]:
    """A non-empty list of ``what`` from a list, tuple or other iterable; a bare string (which would
    be read one character at a time) and a mapping are refused."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{where}: {name}={_shown(value)}; give a list of {what} (a single one as a list of one)")
    out = list(value)
    if not out:
        raise ValueError(f"{where}: {name} is empty; give at least one of {what}")
    return out


def names(where: str, name: str, value: Any, what: str) -> List[str]:
    out = items(where, name, value, what)
    bad = [v for v in out if not isinstance(v, str)]
    if bad:
        raise ValueError(f"{where}: {name} must hold {what}, strings; got {_shown(bad[0])} ({type(bad[0]).__name__})")
    return out


def seeds(where: str, name: str, value: Any) -> List[int]:
    out = items(where, name, value, "integer seeds")
    return [whole(where, f"{name}[{i}]", s, minimum=0) for i, s in enumerate(out)]


def function(where: str, name: str, value: Any, what: str) -> Optional[Callable]:
    if value is not None and not callable(value):
        raise ValueError(f"{where}: {name}={_shown(value)} is not callable; give {what}, or None")
    return value


def text(where: str, name: str, value: Any) -> Optional[str]:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: {name}={_shown(value)}; give a string, or None")
    return value
