"""The stage-aware scale loop, generic over model families.

A call has three parts:

1. :meth:`Engine.setup` -- the adapter binds the call's arguments and builds its inputs, the plan
   for the call's schedule is resolved, and the projection generator is seeded;
2. :meth:`Engine.run_scale` -- runs one planned scale: cut rows to one branch, run the units
   intact or low-rank, sample. It touches only tensors: no host reads of device values, no
   synchronisation, no clock, so an executor may launch it eagerly or replay it from a captured
   CUDA graph (:mod:`stagevar.executors`);
3. :meth:`Engine.finish` -- decode and return what the original entry point returns.

Bookkeeping lives outside the per-scale method: the token counts and FLOP model are derived
from the plan (:func:`plan_stats`), times come from a :class:`Timeline` (CUDA events, read when
the report is read), and the KV-cache length check runs only in debug mode (:data:`DEBUG_CHECKS`,
on in the test suite).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

import torch

from .adapters.base import Adapter, select_rows
from .config import StageVARConfig
from .lowrank import reducer
from ._warnings import warn_at_caller
from .plan import NoAccelerationWarning, ScalePlan, resolve_plan, unit_layout
from .report import PlanStats, Report, ScaleStats, Timeline, plan_stats

_MASK63 = (1 << 63) - 1

#: Check every block's KV-cache length after every scale (set ``STAGEVAR_DEBUG=1``). Off in
#: production: it walks every block on the host at every scale.
DEBUG_CHECKS = os.environ.get("STAGEVAR_DEBUG", "") not in ("", "0")


class TextBucketWarning(UserWarning):
    """Text bucketing was turned off for a model: a padded call was not bit-identical to the unpadded one."""


def projection_seed(g_seed: Optional[int], config_seed: int) -> int:
    """Seed of the projection/selection generator, derived from the call's seed and the config's.

    Kept apart from the sampling generator: projection draws never shift the sampling stream.
    """
    base = -1 if g_seed is None else int(g_seed)
    return (base * 0x9E3779B97F4A7C15 + config_seed * 0xBF58476D1CE4E5B9 + 0x5EED) & _MASK63


def outputs_equal(a: Any, b: Any) -> bool:
    """Bit-equality of two generation outputs (tensors, nested lists/tuples, plain values)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(outputs_equal(x, y) for x, y in zip(a, b))
    return a == b


def first_difference(a: Any, b: Any, where: str) -> str:
    """Where two outputs first differ (``output[2]: max |diff| 0.25``), or '' where they are equal."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return ""
    if outputs_equal(a, b):
        return ""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype:
        diff = (a.double() - b.double()).abs()
        return f"{where} ({int((diff > 0).sum())} of {diff.numel()} values, max |diff| {float(diff.max()):.3g})"
    return f"{where}"


def autocast_state(device: torch.device) -> tuple:
    kind = device.type
    try:
        return (torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
    except TypeError:  # older torch: no device argument
        return (torch.is_autocast_enabled(), None)


#: Text lengths checked in their bucket that are remembered (then the checks start over).
_CHECKED_KEPT = 4096


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


class CallRecorder(Observer):
    """What one eager call computed, for comparing it with another: per computed scale its final
    tensors after the scale (``after``, ``(si, tensors)``), with ``outputs`` its transformer output
    before sampling too (``outputs``, ``(si, x)``), and the final tensors at the end (``final``)."""

    def __init__(self, adapter: Any, outputs: bool = True):
        self.adapter, self.keep_outputs = adapter, outputs
        self.outputs: List[Tuple[int, torch.Tensor]] = []
        self.after: List[Tuple[int, List[torch.Tensor]]] = []
        self.final: List[torch.Tensor] = []

    def scale_output(self, st: Any, si: int, x: torch.Tensor) -> None:
        if self.keep_outputs:
            self.outputs.append((si, x.clone()))

    def scale_done(self, st: Any, si: int) -> None:
        self.after.append((si, [t.clone() for t in self.adapter.final_tensors(st)]))

    def finished(self, call: "Call") -> None:
        self.final = [t.clone() for t in self.adapter.final_tensors(call.st)]

    def first_difference(self, other: "CallRecorder") -> str:
        """Where this call and ``other`` first differ: a scale's output, then the final tensors."""
        for (si, x), (_, y) in zip(self.outputs, other.outputs):
            found = first_difference(x, y, f"scale {si}'s transformer output")
            if found:
                return found
        if len(self.outputs) != len(other.outputs):
            return f"the number of scales run ({len(self.outputs)} vs {len(other.outputs)})"
        return first_difference(self.final, other.final, "final tensor")


@dataclass
class Call:
    """The engine's side of one generation call. ``st`` is the adapter's call state.

    Everything :meth:`Engine.run_scale` reads or writes is reachable from here, so an executor
    can find a call's tensors (:meth:`stagevar.adapters.base.CallState.tensors`)."""

    st: Any
    plans: List[ScalePlan]
    gen: torch.Generator                 # projection / representative selection
    rows: int                            # rows of the first scale's input (2B with CFG)
    width: int                           # the transformer's C
    last_lowrank: int                    # index of the last low-rank scale (-1: none)
    unit_out: List[Optional[Tuple[torch.Tensor, Tuple[int, int]]]]
    observer: Optional[Observer] = None
    branch: str = "both"
    text: Tuple[int, int, str] = (0, 0, "")  # (longest text, bucket padded to or 0, why not padded)


class Executor(Protocol):
    """Decides how each planned scale of a call is launched (:mod:`stagevar.executors`)."""

    name: str

    def run(self, engine: "Engine", args: tuple, kwargs: dict) -> Any:
        """Run one generation call through ``engine`` and return what the entry point returns."""

    def release(self) -> None:
        """Free whatever the executor holds between calls (captured graphs and their pools)."""


class EagerExecutor:
    """Runs every planned scale as Python issues it (:meth:`Engine.run_eager`): the executor of a
    CPU, and of ``execution="eager"``."""

    name = "eager"

    def run(self, engine: "Engine", args: tuple, kwargs: dict) -> Any:
        return engine.run_eager(args, kwargs)

    def release(self) -> None:
        """Nothing is held between calls."""


class Engine:
    """Runs a model's generation call under one :class:`StageVARConfig`.

    The engine defines what a call does; its ``executor`` decides how each planned scale is
    launched (:class:`EagerExecutor` by default; the CUDA-graph one is in :mod:`stagevar.executors`).
    """

    def __init__(self, adapter: Adapter, config: StageVARConfig, executor: Optional[Executor] = None):
        self.adapter = adapter
        self.config = config
        self.units = unit_layout(len(adapter.blocks()), config.unit_blocks or adapter.default_unit_blocks)
        adapter.check_units(self.units)
        self.reducer = reducer(config.reducer)  # chosen once: every reduced unit of every call runs it
        self._plans: Dict[Tuple[Tuple[int, int], ...], List[ScalePlan]] = {}
        self._report: Optional[Report] = None
        self.executor: Executor = executor if executor is not None else EagerExecutor()
        self.config_source = "given"
        self.debug = DEBUG_CHECKS
        # text bucketing (see :meth:`_text_bucket`): the lengths, why it is off, the buckets checked
        self.text_buckets: Tuple[int, ...] = ()
        self.buckets_off = ""
        self._buckets_checked: set = set()
        self._unpadded = False

    def __getstate__(self) -> dict:
        # copies (deepcopy) start without the last call's report (it may hold CUDA events)
        state = dict(self.__dict__)
        state["_report"] = None
        return state

    @property
    def last_report(self) -> Optional[Report]:
        """The report of the last completed call (its times read now, once), or None."""
        if self._report is not None:
            self._report.resolve()
        return self._report

    @last_report.setter
    def last_report(self, value: Optional[Report]) -> None:
        self._report = value

    def unread_report(self) -> Optional[Report]:
        """The last call's report without reading its times (that would wait for the device)."""
        return self._report

    def note(self, text: str) -> None:
        """Say on the last call's report why it ran as it did (e.g. an executor's fallback)."""
        if self._report is not None:
            self._report.note = text

    def plan_for(self, schedule, warn: bool = True) -> List[ScalePlan]:
        """The resolved plan for a schedule (validated; warns if nothing is accelerated)."""
        key = tuple((int(h), int(w)) for h, w in schedule)
        if key not in self._plans:
            plans = resolve_plan(self.config, key, self.units, warn=warn)
            self.adapter.check_plan(plans)
            self._plans[key] = plans
        return self._plans[key]

    def __call__(self, *args, **kwargs) -> Any:
        with torch.no_grad():
            keys = self._bucket_keys(args, kwargs)
            if keys is not None and keys[0] not in self._buckets_checked:
                return self._check_bucket(keys, args, kwargs)
            if keys is not None and keys[1] not in self._buckets_checked:
                self._probe_lengths(keys, args, kwargs)
            return self.executor.run(self, args, kwargs)

    # -- text bucketing ----------------------------------------------------------------------------
    def _text_bucket(self, args: tuple, kwargs: dict, g_seed: Any, lengths: Any = ()) -> Tuple[int, int, str]:
        """``(longest text, bucket, why not)`` for a call: the smallest of ``text_buckets`` that holds
        its text (0 where it is not padded, and why). ``lengths``: the call's text lengths, where
        the caller has read them already."""
        if not self.text_buckets:
            return (0, 0, "")
        if lengths == ():
            lengths = self.adapter.text_lengths(args, kwargs)
        if not lengths:
            return (0, 0, "")
        n = max(lengths)
        if self.buckets_off:
            return (n, 0, f"text buckets off: {self.buckets_off}")
        if g_seed is None:
            return (n, 0, "unseeded call: text not bucketed (it runs eagerly)")
        if self._unpadded:
            return (n, 0, "")
        fits = [b for b in self.text_buckets if b >= n]
        if not fits:
            return (n, 0, f"text longer than every bucket ({self.text_buckets[-1]} tokens)")
        return (n, fits[0], "")

    def _bucket_keys(self, args: tuple, kwargs: dict) -> Optional[Tuple[tuple, tuple]]:
        """``(bucket key, lengths key)`` of a call that pads its text (None where it does not): what
        its checks against unpadded calls are remembered by."""
        if not self.text_buckets or self.buckets_off:
            return None
        try:
            g_seed = self.adapter.bind_call(args, kwargs).get("g_seed")
        except Exception:  # noqa: BLE001 -- the call itself reports its bad arguments
            return None
        lengths = self.adapter.text_lengths(args, kwargs)
        _, bucket, _ = self._text_bucket(args, kwargs, g_seed, lengths)
        if not bucket:
            return None
        state = (autocast_state(self.adapter.device()), torch.is_inference_mode_enabled())
        return (bucket,) + state, (bucket, lengths) + state

    def _compared(self, args: tuple, kwargs: dict, first_scale_only: bool) -> Tuple[Any, str, Any]:
        """The call padded, then unpadded, eagerly: ``(unpadded output, where they first differ or '',
        its report)``. Compared bit for bit: every computed scale's transformer output before
        sampling (continuous values, which show a kernel that rounds otherwise even where the
        sampled tokens happen to agree), then the final codes and the output. ``first_scale_only``:
        set up and run the first computed scale only (a probe), no output."""
        runs = []
        for unpadded in (False, True):
            seen = CallRecorder(self.adapter)
            self._unpadded = unpadded
            try:
                if first_scale_only:
                    call = self.setup(args, kwargs, observer=seen)
                    try:
                        first = next((p for p in call.plans if not p.skipped), None)
                        if first is not None:
                            self.run_scale(call, first)
                    finally:
                        self.end(call)
                    out = None
                else:
                    out = self.run_eager(args, kwargs, observer=seen, before_end=seen.finished)
            finally:
                self._unpadded = False
            runs.append((out, seen))
        (padded, a), (out, b) = runs
        where = a.first_difference(b) or first_difference(padded, out, "output")
        return out, where, None if first_scale_only else self.unread_report()

    def _turn_buckets_off(self, bucket: int, where: str) -> None:
        self.buckets_off = (f"a call padded to {bucket} tokens differs from the unpadded call at {where} "
                            f"(this model's text attention or projection is not exact with padded text)")
        warn_at_caller(f"stagevar: text bucketing turned off for this model: {self.buckets_off}; calls run their "
                       f"text unpadded from now on (under CUDA graphs each text length is its own call shape)",
                       TextBucketWarning)

    def _remember(self, key: tuple) -> None:
        if len(self._buckets_checked) >= _CHECKED_KEPT:
            self._buckets_checked.clear()
        self._buckets_checked.add(key)

    def _check_bucket(self, keys: Tuple[tuple, tuple], args: tuple, kwargs: dict) -> Any:
        """The first call of a bucket (per autocast state) runs padded and unpadded, whole and
        eagerly (:meth:`_compared`). Equal: the bucket is kept. Different: bucketing is off for this
        model, with one warning saying where. Returns the unpadded call's output and report."""
        out, where, report = self._compared(args, kwargs, first_scale_only=False)
        if where:
            self._turn_buckets_off(keys[0][0], where)
            report.text = (report.text[0], 0, f"text buckets off: {self.buckets_off}")
        else:
            self._remember(keys[0])
            self._remember(keys[1])
            report.text = (report.text[0], 0, f"bucket {keys[0][0]} checked: the padded call is bit-identical to "
                                              f"this unpadded one")
        return out

    def _probe_lengths(self, keys: Tuple[tuple, tuple], args: tuple, kwargs: dict) -> None:
        """Text lengths new to a checked bucket: their first scale runs padded and unpadded (a
        kernel whose rounding depends on the text length, e.g. a vector loop's tail, shows there);
        a difference turns bucketing off before the call runs."""
        _, where, _ = self._compared(args, kwargs, first_scale_only=True)
        if where:
            self._turn_buckets_off(keys[0][0], where)
        else:
            self._remember(keys[1])

    def observe(self, observer: Observer, *args, **kwargs) -> Any:
        """Run one call eagerly with an :class:`Observer` told what happens (calibration, bench)."""
        with torch.no_grad():
            return self.run_eager(args, kwargs, observer=observer)

    # -- the eager executor ----------------------------------------------------------------------
    def run_eager(self, args: tuple, kwargs: dict, observer: Optional[Observer] = None, note: str = "",
                  before_end: Optional[Callable[[Call], None]] = None) -> Any:
        """One call, every planned scale issued by Python in turn; ``before_end(call)`` sees the
        finished call before the adapter ends it (e.g. to read its final tensors)."""
        t0 = time.perf_counter()
        self.last_report = None  # a call that fails leaves no report rather than the previous one
        call = self.setup(args, kwargs, observer=observer)
        try:
            out = self.loop_eager(call, t0, note=note)
            if before_end is not None:
                before_end(call)
            return out
        finally:
            self.end(call)

    def loop_eager(self, call: Call, t0: float, note: str = "") -> Any:
        """Run ``call``'s scales eagerly and decode; sets the report (times read lazily)."""
        stats = self.stats(call)
        timeline = Timeline(self.adapter.device())
        timeline.mark()
        for p in call.plans:
            self.run_scale(call, p)
            timeline.mark()
            if self.debug:
                self.check_caches(call, p, stats)
        out = self.finish(call)
        timeline.mark()
        self.last_report = self.make_report(call, stats, timeline, host_s=time.perf_counter() - t0,
                                            executor="eager", note=note)
        return out

    # -- the seam: setup, one scale, finish ------------------------------------------------------
    def setup(self, args: tuple, kwargs: dict, observer: Optional[Observer] = None) -> Call:
        """Begin a call: the adapter's state, the plan, the seeded projection generator. On error the
        adapter's ``end`` has run."""
        ad, config = self.adapter, self.config
        n_blocks, n_planned = len(ad.blocks()), self.units[-1][1] if self.units else 0
        if n_blocks != n_planned:
            raise RuntimeError(f"stagevar: the model has {n_blocks} transformer blocks now but had {n_planned} when it "
                               f"was accelerated (blocks were added or removed since); call "
                               f"stagevar.accelerate(model, config) again to plan for the new depth")
        try:
            st = ad.begin(args, kwargs, cache_condition=config.cache_condition)
        except BaseException:  # begin may have switched caches on and wrapped conditions before it failed
            ad.end(None)
            raise
        try:
            text = self._text_bucket(args, kwargs, st.g_seed)
            if text[1]:
                ad.pad_text(st, text[1])
            plans = self.plan_for(ad.schedule(st))
            if st.run_scales is not None and st.run_scales < len(plans):
                plans = self._truncated(plans, st.run_scales)
            device = ad.device()
            gen = torch.Generator(device=device)
            gen.manual_seed(projection_seed(st.g_seed, config.seed))
            first = next((p for p in plans if not p.skipped), None)
            x0 = ad.scale_input(st, 0 if first is None else first.index)
            last_lowrank = max((p.index for p in plans if p.lowrank and not p.skipped), default=-1)
            return Call(st=st, plans=plans, gen=gen, rows=x0.shape[0], width=x0.shape[-1], last_lowrank=last_lowrank,
                        unit_out=[None] * len(self.units), observer=observer, text=text)
        except BaseException:
            ad.end(st)
            raise

    def _truncated(self, plans: List[ScalePlan], n: int) -> List[ScalePlan]:
        """The first ``n`` scales of the full call's plan (a call that stops early, e.g. Infinity's
        ``trunk_scale``, runs what the full call would have run up to there)."""
        if self.config.name != "none" and not any(p.accelerated for p in plans[:n]):
            what = "runs no scale at all" if n == 0 else f"stops after scale {n - 1}, before any scale it accelerates"
            warn_at_caller(f"config {self.config.name!r}: this call {what}; nothing is accelerated",
                           NoAccelerationWarning)
        return plans[:n]

    def run_scale(self, call: Call, p: ScalePlan) -> None:
        """Run planned scale ``p`` of ``call``: tensors only, no host read of a device value."""
        ad, st, obs = self.adapter, call.st, call.observer
        if p.skipped:
            ad.skip_scale(st, p.index)
            return
        if p.branch != call.branch:
            ad.keep_rows(st, p.branch)
            call.unit_out = [None if u is None else (select_rows(u[0], u[0].shape[0] // 2, p.branch), u[1])
                             for u in call.unit_out]
            call.branch = p.branch
        blocks = ad.blocks()
        x = ad.scale_input(st, p.index)
        for u, (lo, hi) in enumerate(self.units):
            x = ad.unit_input(st, p.index, lo, x)
            if obs is not None:
                obs.unit_input(st, p.index, u, x)
            r = None if p.ranks is None else p.ranks[u]
            if r is None:
                for b in blocks[lo:hi]:
                    x = ad.run_block(st, b, x, p.index)
            else:
                x = self._lowrank_unit(st, blocks[lo:hi], x, r, p, call.unit_out[u], call.gen)
            if p.index < call.last_lowrank:
                call.unit_out[u] = (x, p.hw)
        if obs is not None:
            obs.scale_output(st, p.index, x)
        ids = ad.predict(st, p.index, x)
        if obs is not None:
            obs.scale_done(st, p.index)
            obs.sampled(p.index, ids)

    def finish(self, call: Call) -> Any:
        """Decode: exactly what the original entry point returns."""
        return self.adapter.finish(call.st)

    def end(self, call: Optional[Call]) -> None:
        """Always called after a call (caches off and emptied)."""
        if call is not None:
            self.adapter.end(call.st)

    # -- bookkeeping, outside the per-scale method -------------------------------------------------
    def stats(self, call: Call) -> PlanStats:
        return plan_stats(call.plans, self.units, call.rows, call.width)

    def check_caches(self, call: Call, p: ScalePlan, stats: PlanStats) -> None:
        """Debug check: every block's KV cache holds what the plan says after scale ``p``."""
        rows = stats.rows[p.index] or None
        lengths = self.adapter.cache_lengths()
        if lengths is None:  # a family whose caches cannot be read this way
            return
        for j, (held, want) in enumerate(zip(lengths, stats.cache_tokens[p.index])):
            if rows is None:
                continue
            if held is None or held != (rows, want):
                raise RuntimeError(f"stagevar: after scale {p.index}, block {j}'s KV cache holds {held} (rows, tokens); "
                                   f"expected {(rows, want)}. The model's attention cache does not behave as "
                                   f"upstream's does; please report this with the model class.")

    def make_report(self, call: Call, stats: PlanStats, timeline: Timeline, host_s: float, executor: str,
                    **extra) -> Report:
        """The call's report; the times stay unread (CUDA events) until the report is read."""
        plans = call.plans
        extra.setdefault("text", call.text)
        scales = [ScaleStats(p.index, p.hw, p.mode, stats.rows[p.index], stats.tokens[p.index], 0.0,
                             stats.gflops[p.index]) for p in plans]
        return Report(config_name=self.config.name, config_source=self.config_source, batch_size=call.st.B,
                      device=str(self.adapter.device()), scales=scales, skipping=any(p.skipped for p in plans),
                      intact_rows=stats.intact_rows, executor=executor, host_s=host_s, timeline=timeline, **extra)

    def _lowrank_unit(self, st: Any, blocks, x_BMC: torch.Tensor, r: int, p: ScalePlan,
                      prev: Optional[Tuple[torch.Tensor, Tuple[int, int]]], gen: torch.Generator) -> torch.Tensor:
        """Run ``blocks`` on ``r`` tokens of ``x_BMC`` (``(rows, M, C)``), reduced and expanded back to
        ``M`` outputs by the config's reducer."""
        if prev is None:
            raise RuntimeError(f"stagevar: low-rank scale {p.index} has no previous-scale unit output to restore from")
        red = self.reducer
        idx_Br = red.select(x_BMC, r, gen)
        x_BrC = red.reduce(x_BMC, idx_Br, gen)
        for b in blocks:
            x_BrC = self.adapter.run_block(st, b, x_BrC, p.index, positions=idx_Br)
        return red.expand(x_BrC, idx_Br, prev[0], prev[1], p.hw)
