"""Named methods, and the one interleaved runner the demo, the benchmark and the quality
evaluation measure them with.

A method is ``(label, config)``: ``config`` None is the model's own unpatched call (the
baseline). :func:`resolve_methods` turns names (presets, ``cfg-only``, ``lowrank-only``,
``skip-last-N``, ``uncond-last-N``, ``cond-last-N``, ``fastvar``, JSON files) into methods.

:func:`run_interleaved` runs ``arms x rounds x batches``: an :class:`Arm` is a method under one
executor (``eager`` / ``graphs`` / ``auto``). Every round runs every batch under every arm in
turn, with the same arguments (seeds included), after untimed warm-up calls; each accelerated
arm keeps one engine for the whole run (so its captured CUDA graphs survive the other arms'
calls); the model is unpatched when the runner returns or raises.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

from . import api
from ._progress import Progress
from .adapters import adapter_for
from .config import ConfigError, StageVARConfig
from .engine import Engine
from .executors import EXECUTIONS, make_executor
from .presets import preset, presets
from .report import Report
from .timing import DecodeTimer, timed

Method = Tuple[str, Optional[StageVARConfig]]

METHODS_HELP = ("baseline (the unpatched call), any preset name, cfg-only, lowrank-only, skip-last-N, "
                "uncond-last-N, cond-last-N, fastvar, or a path to a StageVARConfig JSON file")


# -- named methods -------------------------------------------------------------------------------
def _last_n(name: str, prefix: str) -> int:
    try:
        n = int(name[len(prefix):])
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"method {name!r}: write {prefix}N with N >= 1, e.g. {prefix}2")
    return n


def fastvar_config(depth: int) -> StageVARConfig:
    """FastVAR-style cached token pruning as a plan: at the last two scales, in the middle blocks
    (from ``round(0.1 * depth)`` to ``round(0.85 * depth)``), keep the 60% / 50% of tokens farthest
    from the token-map mean and fill the others from the previous scale's output, upsampled.
    Both CFG branches run; nothing is skipped (skipping is its own method)."""
    lo, hi = round(0.1 * depth), round(0.85 * depth)

    def per_block(keep: float) -> List[float]:
        return [keep if lo <= j < hi else 1.0 for j in range(depth)]

    return StageVARConfig(refine_start=-2, branch="both", rank_ratios={-2: per_block(0.6), -1: per_block(0.5)},
                          unit_blocks=1, projection="sample", selection="mean_distance", name="fastvar")


def method_config(name: str, default_preset: str, depth: int) -> Optional[StageVARConfig]:
    """The config of one method name (None for ``baseline``); errors name the accepted methods.

    ``default_preset``: the family's preset that ``cfg-only`` / ``lowrank-only`` take apart;
    ``depth``: the model's block count (``fastvar`` prunes its middle blocks)."""
    if name == "baseline":
        return None
    if name in presets():
        return preset(name)
    if name == "cfg-only":
        return preset(default_preset).replace(rank_ratio=None, rank_ratios={}, rank_table={}, alpha=None, name=name)
    if name == "lowrank-only":
        return preset(default_preset).replace(branch="both", name=name)
    if name.startswith("skip-last-"):
        n = _last_n(name, "skip-last-")
        return StageVARConfig(refine_start=None, skip=tuple(range(-n, 0)), name=name)
    if name.startswith(("uncond-last-", "cond-last-")):  # one CFG branch on the last N scales, full rank
        branch = name.split("-", 1)[0]
        return StageVARConfig(refine_start=-_last_n(name, f"{branch}-last-"), branch=branch, name=name)
    if name == "fastvar":
        return fastvar_config(depth)
    if name.endswith(".json") or os.path.isfile(name):
        try:
            return StageVARConfig.load(name)
        except FileNotFoundError:
            raise ConfigError(f"method {name!r}: no such config file") from None
    raise ConfigError(f"unknown method {name!r}; methods: {METHODS_HELP}")


def resolve_methods(names: Sequence[str], default_preset: str, depth: int) -> List[Method]:
    """Method names -> ``[(label, config or None)]``, the unpatched ``baseline`` first (added if
    missing: ratios and fidelity are against it). A JSON file is labelled by its config's name."""
    out: List[Method] = []
    for name in names:
        cfg = method_config(name, default_preset, depth)
        label = name if cfg is None or not name.endswith(".json") or cfg.name == "custom" else cfg.name
        out.append((label, cfg))
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"methods repeat a name: {labels}")
    if not out or out[0][1] is not None:
        out.insert(0, ("baseline", None))
    return out


# -- the runner ----------------------------------------------------------------------------------
class _ModelDefault:
    def __repr__(self) -> str:
        return "MODEL_DEFAULT"


#: An arm's config meaning "what ``stagevar.accelerate(model)`` picks without one": the config the
#: model carries (``model.stagevar_config``), else its family's default preset.
MODEL_DEFAULT: Any = _ModelDefault()


@dataclass(frozen=True)
class Arm:
    """One method under one executor. ``config``: a :class:`StageVARConfig`, :data:`MODEL_DEFAULT`,
    or None for the model's own unpatched call, which has no executor (its ``execution`` is
    ``"eager"``)."""

    label: str
    config: Any
    execution: str = "eager"

    def __post_init__(self):
        if self.execution not in EXECUTIONS:
            raise ValueError(f"execution={self.execution!r} is not one of {EXECUTIONS}")
        if self.config is None and self.execution != "eager":
            raise ValueError(f"arm {self.label!r}: the unpatched call runs eagerly; give it execution='eager'")

    @property
    def name(self) -> str:
        """The label, with the executor where it is not eager."""
        return self.label if self.execution == "eager" else f"{self.label} [{self.execution}]"

    @property
    def given(self) -> Optional[StageVARConfig]:
        """What to pass to :func:`stagevar.accelerate` for this arm (None: the model's default)."""
        return None if self.config is MODEL_DEFAULT else self.config


def arms_for(methods: Sequence[Method], executions: Sequence[str] = ("eager",)) -> List[Arm]:
    """``methods x executions`` (method by method); the unpatched baseline once, eager."""
    executions = list(dict.fromkeys(executions))
    if not executions:
        raise ValueError("give at least one execution")
    out: List[Arm] = []
    for label, cfg in methods:
        out.extend([Arm(label, None)] if cfg is None else [Arm(label, cfg, e) for e in executions])
    return out


def check_executions(executions: Iterable[str], device: Any) -> None:
    """Raise before anything is measured if an execution cannot run on ``device``
    (:class:`stagevar.GraphsUnavailableError` for ``"graphs"`` without CUDA graphs)."""
    for e in dict.fromkeys(executions):
        make_executor(e, torch.device(device))


@dataclass
class Record:
    """One timed call of a run.

    ``wall_s``: to the end of the call's device work (CUDA events around it on a GPU, the clock on
    a CPU); ``host_s``: call entry until it returned, measured around the call (nothing
    synchronised inside); ``decode_s``: the decoder's share; ``report``: stagevar's report of the
    call (None for the unpatched call)."""

    arm: int
    round: int
    batch: int
    wall_s: float
    host_s: float
    decode_s: float
    report: Optional[Report]

    @property
    def loop_s(self) -> float:
        """End-to-end minus decode: the transformer loop and the call's setup."""
        return self.wall_s - self.decode_s


@dataclass
class RunResult:
    """What :func:`run_interleaved` measured: its arms and every timed call, in running order."""

    arms: List[Arm]
    records: List[Record]
    rounds: int
    warmup: int

    def of(self, arm: int) -> List[Record]:
        return [r for r in self.records if r.arm == arm]


class _Switch:
    """Puts the model in an arm's state between calls.

    Each accelerated arm gets its engine once, before the first call, and keeps it: switching
    attaches that engine to the model (or detaches the one running, for the unpatched call)
    without freeing anything, so a graphs arm captures once and replays from then on.
    """

    def __init__(self, model: Any, arms: Sequence[Arm]):
        self.model = model
        self.engines: Dict[int, Engine] = {i: api.build_engine(model, arm.given, execution=arm.execution)
                                           for i, arm in enumerate(arms) if arm.config is not None}

    def to(self, i: int) -> None:
        engine = self.engines.get(i)
        if engine is None:
            api.detach(self.model)
        else:
            api.attach(self.model, engine)

    def close(self) -> None:
        """Free every arm's graphs and leave the model unpatched."""
        api.detach(self.model)
        for engine in self.engines.values():
            api.release_engine(engine)


@contextlib.contextmanager
def _decode_timers(adapter: Any, batches: Sequence[dict], device: Any) -> Iterator[List[Optional[DecodeTimer]]]:
    """One :class:`DecodeTimer` per distinct decoder the batches use; per batch, its timer."""
    timers: Dict[Tuple[int, str], DecodeTimer] = {}
    per_batch: List[Optional[DecodeTimer]] = []
    try:
        for kw in batches:
            try:
                obj, attr = adapter.decoder(kw)
            except (KeyError, NotImplementedError):
                per_batch.append(None)
                continue
            key = (id(obj), attr)
            if key not in timers:
                timers[key] = DecodeTimer(obj, attr, device)
            per_batch.append(timers[key])
        yield per_batch
    finally:
        for t in reversed(list(timers.values())):
            t.remove()


def run_interleaved(model: Any, arms: Sequence[Arm], batches: Sequence[dict], rounds: int = 1, warmup: int = 1,
                    on_call: Optional[Callable[[Record, Any], None]] = None, progress: bool = False,
                    desc: str = "stagevar") -> RunResult:
    """Run ``arms x rounds x batches`` interleaved and time every call.

    Args:
        model: a supported model, unpatched (it is unpatched again when this returns or raises).
        arms: the methods under their executors (:func:`arms_for`).
        batches: the generation call's keyword arguments, one dict per batch; every arm runs
            every batch with the same arguments (the same seeds) in every round.
        rounds: timed rounds. In each, every batch runs under every arm, in the given order.
        warmup: untimed calls per arm on the first batch before the first round; at least two
            for an arm that may run CUDA graphs (its first call of a shape runs eager, the second
            captures), so its timed calls replay.
        on_call: told each timed call's :class:`Record` and output (after the timing).
        progress: a progress bar (tqdm when installed, else one line per call on stderr).

    Returns:
        :class:`RunResult` with every timed call.
    """
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    if warmup < 0:
        raise ValueError("warmup must be at least 0")
    if not arms or not batches:
        raise ValueError("give at least one arm and one batch")
    if api.is_accelerated(model):
        raise ValueError("stagevar's runner needs the unpatched model: call stagevar.restore(model) first")
    adapter = adapter_for(model)
    device = adapter.device()
    warm = [max(warmup, 2) if a.execution != "eager" else warmup for a in arms]
    bar = Progress(sum(warm) + rounds * len(batches) * len(arms), progress, desc, "call")
    records: List[Record] = []
    switch = None
    try:
        switch = _Switch(model, arms)
        with _decode_timers(adapter, batches, device) as timers:
            def call(i: int, b: int) -> Tuple[Any, Any, float]:
                switch.to(i)
                with torch.no_grad():
                    out, t = timed(lambda: getattr(model, adapter.entry_point)(**batches[b]), device)
                decode_s = timers[b].take() if timers[b] is not None else 0.0
                bar.step(f"{arms[i].name}: {t.wall_s * 1e3:.0f} ms")
                return out, t, decode_s

            for w in range(max(warm)):
                for i in range(len(arms)):
                    if w < warm[i]:
                        call(i, 0)
            for r in range(rounds):
                for b in range(len(batches)):
                    for i, arm in enumerate(arms):
                        out, t, decode_s = call(i, b)
                        rep = api.report(model) if arm.config is not None else None
                        rec = Record(arm=i, round=r, batch=b, wall_s=t.wall_s, host_s=t.host_s, decode_s=decode_s,
                                     report=rep)
                        records.append(rec)
                        if on_call is not None:
                            on_call(rec, out)
    finally:
        bar.close()
        if switch is not None:
            switch.close()
        else:
            api.restore(model)
    return RunResult(arms=list(arms), records=records, rounds=rounds, warmup=warmup)


__all__ = ["Method", "METHODS_HELP", "fastvar_config", "method_config", "resolve_methods", "MODEL_DEFAULT", "Arm",
           "arms_for",
           "check_executions", "Record", "RunResult", "run_interleaved"]
