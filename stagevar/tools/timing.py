"""Measuring calls: device synchronisation, clocks, CUDA events, peak memory, the device in words.

One rule for every tool: a timed call starts on an idle device and is timed to the end of its
device work -- CUDA events around the call on a GPU (after a synchronisation), the wall clock on
a CPU -- and nothing inside the call synchronises, so its host-issue time can be read as well.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple, Union

import torch

from ..report import Timeline

DeviceLike = Union[None, str, torch.device]


def _device(device: DeviceLike) -> Optional[torch.device]:
    return None if device is None else torch.device(device)


def _timeline(device: DeviceLike) -> Timeline:
    """The engine's marks (CUDA events on the current stream, or the host clock) for ``device``."""
    return Timeline(torch.device("cuda") if device is None and torch.cuda.is_available()
                    else _device(device) or torch.device("cpu"))


def _is_cuda(device: DeviceLike) -> bool:
    d = _device(device)
    return torch.cuda.is_available() if d is None else d.type == "cuda"


def sync(device: DeviceLike = None) -> None:
    """Wait for ``device``'s queued work (CUDA; no-op elsewhere). ``None``: the current CUDA
    device when there is one."""
    if _is_cuda(device) and torch.cuda.is_available():
        torch.cuda.synchronize(_device(device))


def machine_name(device: DeviceLike = None) -> str:
    """The device in words, for printed figures (``device``: where the model runs; default the
    first CUDA device when there is one)."""
    if _is_cuda(device):
        return f"CUDA {torch.cuda.get_device_name(_device(device))}"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


@dataclass(frozen=True)
class CallTime:
    """One timed call: ``wall_s`` from start to the end of its device work (synchronised),
    ``host_s`` from entry until the call returned (nothing synchronised inside)."""

    wall_s: float
    host_s: float


def timed(call: Callable[[], Any], device: DeviceLike = None) -> Tuple[Any, CallTime]:
    """``(call(), CallTime)``: the device is synchronised before; on CUDA, events around the call
    give the wall time, on a CPU the clock does."""
    sync(device)
    marks = _timeline(device)
    marks.mark()
    t0 = time.perf_counter()
    out = call()
    host_s = time.perf_counter() - t0
    marks.mark()
    wall_s = marks.seconds()[0] if marks.cuda else host_s
    return out, CallTime(wall_s=wall_s, host_s=host_s)


class DecodeTimer:
    """Wraps ``getattr(obj, attr)`` on the instance (the decoder a call uses) and marks its start
    and end without synchronising, so a call's transformer loop (end-to-end minus decode) can be
    told apart from its decode. :meth:`take` returns the seconds decoded since the last take
    (read after the call's device work ended) and starts over."""

    def __init__(self, obj: Any, attr: str, device: DeviceLike = None):
        self.obj, self.attr = obj, attr
        self.inner = getattr(obj, attr)
        self.device = device
        self._own = attr in vars(obj)  # an instance attribute to put back, else the class's method
        self._spans: List[Timeline] = []
        setattr(obj, attr, self)

    def __call__(self, *args, **kwargs):
        marks = _timeline(self.device)
        marks.mark()
        try:
            return self.inner(*args, **kwargs)
        finally:
            marks.mark()
            self._spans.append(marks)

    def take(self) -> float:
        spans, self._spans = self._spans, []
        return float(sum(m.seconds()[0] for m in spans))

    def remove(self) -> None:
        """Put the decoder back exactly (the instance attribute it replaced, or none)."""
        if vars(self.obj).get(self.attr) is not self:
            return
        if self._own:
            setattr(self.obj, self.attr, self.inner)
        else:
            delattr(self.obj, self.attr)


class _LiveHeap:
    """This process's live heap in bytes: glibc's ``mallinfo2`` (in-use arena plus mmapped
    blocks), which, unlike the resident set, falls when tensors are freed; the resident set size
    where that is unavailable (``kind`` says which)."""

    def __init__(self):
        import ctypes

        self.kind = "cpu_peak_rss_increase_MiB"
        self.read: Callable[[], int] = self._rss
        try:
            class _MI2(ctypes.Structure):
                _fields_ = [(n, ctypes.c_size_t) for n in
                            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

            libc = ctypes.CDLL("libc.so.6")
            libc.mallinfo2.restype = _MI2
            self._libc = libc
            self.read = self._heap
            self.kind = "cpu_peak_heap_increase_MiB"
        except (OSError, AttributeError):
            pass

    def _heap(self) -> int:
        m = self._libc.mallinfo2()
        return m.uordblks + m.hblkhd

    @staticmethod
    def _rss() -> int:
        import os
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return 0


class PeakMemory:
    """Peak memory while the ``with`` block runs: ``kind`` names what, ``mib`` the value.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak (``cuda_max_allocated_MiB``).
    CPU: the peak increase of the process's live heap, sampled every millisecond by a thread.
    """

    def __init__(self, device: DeviceLike = None):
        self.device = _device(device)
        self.cuda = _is_cuda(device)
        self.kind = "cuda_max_allocated_MiB"
        self.mib = 0.0

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import threading

        self._heap = _LiveHeap()
        self.kind = self._heap.kind
        self._base = self._peak = self._heap.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, self._heap.read())

    def __exit__(self, *exc) -> None:
        if self.cuda:
            sync(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._heap.read())
        self.mib = (self._peak - self._base) / 2 ** 20


__all__ = ["sync", "machine_name", "CallTime", "timed", "DecodeTimer", "PeakMemory"]
