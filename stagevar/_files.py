"""Files written whole or not at all."""
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
