"""Files written whole or not at all, read with errors that name them; output folders checked before any work."""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator


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


def read_json(path: str, what: str, fix: str) -> Any:
    """The JSON value in ``path``; a file that is not JSON (cut short, not UTF-8, nested too deep)
    raises ``ValueError`` naming the file, ``what`` it should be, and ``fix``."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{os.fspath(path)} is not {what} ({type(e).__name__}: {str(e)[:120]}); {fix}") from None
