"""Files written whole or not at all; output folders checked before any work."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary name beside ``path`` to write; on success it is renamed to ``path``, on any
    error removed, so ``path`` is never a half-written file (a reader sees the old file or the new)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def folder_problem(folder: str, create_hint: str, write_hint: str) -> str:
    """Create ``folder`` if needed; what is wrong with it as an output folder ('' if nothing), ending
    with what to choose instead (``create_hint`` when it cannot be created, ``write_hint`` when it
    cannot be written)."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        return f"cannot create the output folder {folder!r} ({e.strerror}); {create_hint}"
    if not os.access(folder, os.W_OK):
        return f"the output folder {folder!r} is not writable; {write_hint}"
    return ""
