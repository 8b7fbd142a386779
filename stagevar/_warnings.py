"""Warnings that point at the user's line, not at stagevar's internals."""
from __future__ import annotations

import os
import sys
import warnings
from typing import Type

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def warn_at_caller(message: str, category: Type[Warning]) -> None:
    """``warnings.warn`` with the stack level of the first frame outside the stagevar package.

    The same warning is reached through different depths (a generation call, ``accelerate``, the
    graph executor), so a fixed ``stacklevel`` would name a stagevar file for some of them.
    """
    level, frame = 2, sys._getframe(1)  # stacklevel 1 is this function, 2 its caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
