"""One progress display for the tools: a tqdm bar when tqdm is installed, else a line per step on
stderr; nothing when disabled."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, enabled: bool, desc: str, unit: str):
        self.total, self.enabled, self.desc, self.unit, self.done = total, enabled, desc, unit, 0
        self.start = time.perf_counter()
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
            except ImportError:
                pass

    def step(self, note: str = "") -> None:
        """One more step done; ``note`` says which (shown beside the bar, or on the line)."""
        self.done += 1
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note)
            self.bar.update(1)
        elif self.enabled:
            print(f"{self.desc}: {self.unit} {self.done}/{self.total}{f' ({note})' if note else ''}, "
                  f"{time.perf_counter() - self.start:.1f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
