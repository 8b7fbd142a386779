"""Warnings that point at the user's line, not at stagevar's internals."""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Type

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# frames between a stagevar function and its caller that are not the caller's: context managers
# (``with stagevar.accelerated(...)``) and torch's no_grad/inference_mode decorators
_PASS_THROUGH = (os.path.abspath(contextlib.__file__), os.sep + os.path.join("torch", "utils", "_contextlib.py"))


def _internal(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE_DIR + os.sep) or path == _PASS_THROUGH[0] or path.endswith(_PASS_THROUGH[1])


def warn_at_caller(message: str, category: Type[Warning]) -> None:
    """``warnings.warn`` with the stack level of the first frame outside the stagevar package.

    The same warning is reached through different depths (a generation call, ``accelerate``, the
    graph executor, a ``with`` block), so a fixed ``stacklevel`` would name a stagevar (or
    contextlib) file for some of them.
    """
    level, frame = 2, sys._getframe(1)  # stacklevel 1 is this function, 2 its caller
    while frame is not None and _internal(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
