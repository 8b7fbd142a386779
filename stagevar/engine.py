"""The stage-aware scale loop, generic over model families.

Per call: resolve the plan for the call's schedule, then for each scale either skip it, or run
its units intact or low-rank on the rows the plan keeps, and hand the output to the adapter for
sampling. Everything a call needs lives in local variables; only the finished
:class:`~stagevar.report.Report` is kept, for :func:`stagevar.report`.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Tuple

import torch

from .adapters.base import Adapter, select_rows
from .config import StageVARConfig
from .lowrank import farthest_from_mean_indices, project, representative_indices, restore_tokens
from .plan import ScalePlan, resolve_plan
from .report import Report, ScaleStats

_MASK63 = (1 << 63) - 1


def projection_seed(g_seed: Optional[int], config_seed: int) -> int:
    """Seed of the projection/selection generator, derived from the call's seed and the config's.

    Kept apart from the sampling generator: projection draws never shift the sampling stream.
    """
    base = -1 if g_seed is None else int(g_seed)
    return (base * 0x9E3779B97F4A7C15 + config_seed * 0xBF58476D1CE4E5B9 + 0x5EED) & _MASK63


class Observer:
    """What :meth:`Engine.observe` tells, as no-op hooks to override (``st`` is the adapter's call state)."""

    def unit_input(self, st: Any, si: int, u: int, x: torch.Tensor) -> None:
        """Before unit ``u`` of scale ``si`` runs on ``x`` ``(rows, M, C)``."""

    def scale_output(self, st: Any, si: int, x: torch.Tensor) -> None:
        """Scale ``si``'s output ``x``, before sampling."""

    def scale_done(self, st: Any, si: int) -> None:
        """After scale ``si``'s tokens were sampled and added."""

    def sampled(self, si: int, ids: torch.Tensor) -> None:
        """The token ids sampled at scale ``si``."""


def _block_flops(rows: int, n: int, kv_len: int, C: int) -> float:
    """FLOP model of one block on ``n`` tokens attending to ``kv_len`` keys: QKV, output
    projection and a 4C MLP (``24 C^2`` per token) plus attention (``4 C kv_len`` per token).
    Cross-attention to text and AdaLN are not counted."""
    return rows * n * (24.0 * C * C + 4.0 * C * kv_len)


class _ScaleClock:
    """Per-scale wall time without stalling the device: on CUDA, events recorded on the stream and
    read once after the loop; elsewhere, the host clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.current_stream(device) if self.cuda else None
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(self.stream)
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> List[float]:
        """Time between consecutive marks (call after the device was synchronised)."""
        if self.cuda:
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


class Engine:
    """Runs a model's generation call under one :class:`StageVARConfig`."""

    def __init__(self, adapter: Adapter, config: StageVARConfig):
        self.adapter = adapter
        self.config = config
        n = len(adapter.blocks())
        ub = config.unit_blocks or adapter.default_unit_blocks
        if ub > n:
            from .config import ConfigError
            raise ConfigError(f"unit_blocks={ub} exceeds the model's {n} blocks; use at most {n}")
        self.units: List[Tuple[int, int]] = [(lo, min(lo + ub, n)) for lo in range(0, n, ub)]
        adapter.check_units(self.units)
        self._plans: Dict[Tuple[Tuple[int, int], ...], List[ScalePlan]] = {}
        self.last_report: Optional[Report] = None

    def plan_for(self, schedule, warn: bool = True) -> List[ScalePlan]:
        """The resolved plan for a schedule (validated; warns if nothing is accelerated)."""
        key = tuple((int(h), int(w)) for h, w in schedule)
        if key not in self._plans:
            self._plans[key] = resolve_plan(self.config, key, len(self.units), warn=warn)
        return self._plans[key]

    def __call__(self, *args, **kwargs) -> Any:
        with torch.no_grad():
            return self._run(args, kwargs)

    def observe(self, observer: "Observer", *args, **kwargs) -> Any:
        """Run one call with an :class:`Observer` told what happens (calibration, bench)."""
        with torch.no_grad():
            return self._run(args, kwargs, observer)

    # ------------------------------------------------------------------------------------------
    def _sync(self, device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def _check_caches(self, expected_tokens: List[int], rows: int, si: int) -> None:
        for j, (held, want) in enumerate(zip(self.adapter.cache_lengths(), expected_tokens)):
            if held is None or held != (rows, want):
                raise RuntimeError(f"stagevar: after scale {si}, block {j}'s KV cache holds {held} (rows, tokens); "
                                   f"expected {(rows, want)}. The model's attention cache does not behave as "
                                   f"upstream's does; please report this with the model class.")

    def _run(self, args: tuple, kwargs: dict, observer: Optional[Observer] = None) -> Any:
        ad, cfg = self.adapter, self.config
        self.last_report = None  # a call that fails leaves no report rather than the previous one
        st = None
        try:
            st = ad.begin(args, kwargs, cache_condition=cfg.cache_condition)
            plans = self.plan_for(ad.schedule(st))
            device = ad.device()
            gen = torch.Generator(device=device)
            gen.manual_seed(projection_seed(ad.g_seed(st), cfg.seed))
            blocks = ad.blocks()
            last_lowrank = max((p.index for p in plans if p.lowrank and not p.skip), default=-1)
            unit_out: List[Optional[Tuple[torch.Tensor, Tuple[int, int]]]] = [None] * len(self.units)
            expected = [0] * len(blocks)
            branch = "both"
            stats: List[ScaleStats] = []
            batch = ad.batch_size(st)
            intact_rows = 0
            t_loop = self._sync(device)
            clock = _ScaleClock(device)
            clock.mark()
            pending: List[tuple] = []  # ScaleStats fields but the time, filled in after the loop
            for p in plans:
                if p.skip:
                    ad.skip(st, p.index)
                    clock.mark()
                    pending.append((p.index, p.hw, p.mode, 0, (), 0.0))
                    continue
                if p.branch != branch:
                    ad.keep_rows(st, p.branch)
                    unit_out = [None if u is None else (select_rows(u[0], u[0].shape[0] // 2, p.branch), u[1])
                                for u in unit_out]
                    branch = p.branch
                x = ad.scale_input(st, p.index)
                rows = x.shape[0]
                intact_rows = intact_rows or (rows * 2 if branch != "both" else rows)
                tokens = []
                flops = 0.0
                for u, (lo, hi) in enumerate(self.units):
                    x = ad.unit_input(st, p.index, lo, x)
                    if observer is not None:
                        observer.unit_input(st, p.index, u, x)
                    r = None if p.ranks is None else p.ranks[u]
                    if r is None:
                        for b in blocks[lo:hi]:
                            x = ad.run_block(st, b, x, p.index)
                        n_tok = p.M
                    else:
                        x = self._lowrank_unit(st, blocks[lo:hi], x, r, p, unit_out[u], gen)
                        n_tok = r
                    for j in range(lo, hi):
                        expected[j] += n_tok
                        flops += _block_flops(rows, n_tok, expected[j], x.shape[-1])
                    tokens.append(n_tok)
                    if p.index < last_lowrank:
                        unit_out[u] = (x, p.hw)
                self._check_caches(expected, rows, p.index)
                if observer is not None:
                    observer.scale_output(st, p.index, x)
                ids = ad.predict(st, p.index, x)
                if observer is not None:
                    observer.scale_done(st, p.index)
                    observer.sampled(p.index, ids)
                clock.mark()
                pending.append((p.index, p.hw, p.mode, rows, tuple(tokens), flops / 1e9))
            loop_s = self._sync(device) - t_loop
            for (index, hw, mode, rows, tokens, gflops), secs in zip(pending, clock.seconds()):
                stats.append(ScaleStats(index, hw, mode, rows, tokens, secs, gflops))
            t_dec = time.perf_counter()
            out = ad.finish(st)
            decode_s = self._sync(device) - t_dec
            self.last_report = Report(config_name=cfg.name, batch_size=batch, device=str(device), scales=stats,
                                      loop_s=loop_s, decode_s=decode_s, skipping=any(p.skip for p in plans),
                                      intact_rows=intact_rows)
            return out
        finally:
            ad.end(st)

    def _lowrank_unit(self, st: Any, blocks, x_BMC: torch.Tensor, r: int, p: ScalePlan,
                      prev: Optional[Tuple[torch.Tensor, Tuple[int, int]]], gen: torch.Generator) -> torch.Tensor:
        """Run ``blocks`` on ``r`` tokens of ``x_BMC`` (``(rows, M, C)``) and restore ``M`` outputs."""
        if prev is None:
            raise RuntimeError(f"stagevar: low-rank scale {p.index} has no previous-scale unit output to restore from")
        if self.config.selection == "mean_distance":
            idx_Br = farthest_from_mean_indices(x_BMC, r)
        else:
            idx_Br = representative_indices(x_BMC, r, gen)
        x_BrC = project(x_BMC, r, self.config.projection, idx_Br, gen)
        for b in blocks:
            x_BrC = self.adapter.run_block(st, b, x_BrC, p.index, positions=idx_Br)
        return restore_tokens(prev[0], prev[1], x_BrC, idx_Br, p.hw)
