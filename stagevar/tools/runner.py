"""The one interleaved runner the demo, the benchmark and the quality evaluation measure methods with.

A method is ``(label, config)``: ``config`` is a :class:`StageVARConfig`, :data:`MODEL_DEFAULT`
(what ``stagevar.accelerate(model)`` picks) or :data:`BASELINE` (the model's own unpatched call).
:func:`resolve_methods` turns names -- ``baseline``, any name of :func:`stagevar.preset_names`
(presets, ``cfg-only``, ``lowrank-only``, ``skip-last-N``, ``fastvar``, ...) or a JSON file --
into methods.

:func:`run_interleaved` runs ``arms x rounds x batches``: an :class:`Arm` is a method under one
executor (``eager`` / ``graphs`` / ``auto``). Every round runs every batch under every arm in
turn, with the same arguments (seeds included), after untimed warm-up calls; each accelerated
arm keeps one engine for the whole run (so its captured CUDA graphs survive the other arms'
calls); the model is unpatched when the runner returns or raises.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

from .. import api
from ._progress import Progress
from ..adapters import adapter_for
from ..config import ConfigError, StageVARConfig
from ..engine import Engine
from ..executors import EXECUTIONS, make_executor
from ..presets import BASELINE_NAME, PATTERNS, named
from ..report import Report
from .timing import DecodeTimer, PeakMemory, timed


class _Sentinel:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def __reduce__(self):  # copies and pickles stay the one object
        return self.name


#: A method's config meaning the model's own unpatched call (no stagevar at all).
BASELINE: Any = _Sentinel("BASELINE")
#: A method's config meaning "what ``stagevar.accelerate(model)`` picks without one": the config the
#: model carries (``model.stagevar_config``), else its family's default preset.
MODEL_DEFAULT: Any = _Sentinel("MODEL_DEFAULT")

Method = Tuple[str, Any]  # (label, StageVARConfig | BASELINE | MODEL_DEFAULT)

METHODS_HELP = ("baseline (the unpatched call), any config name of stagevar.preset_names() (a preset, cfg-only, "
                "lowrank-only, fastvar, " + ", ".join(p + "N" for p in PATTERNS) + "), or a path to a "
                "StageVARConfig JSON file")


# -- named methods -------------------------------------------------------------------------------
def method_config(name: str, model: Any = None, family_default: Optional[Callable[[], str]] = None) -> Any:
    """The config of one method name for ``model``: :data:`BASELINE` for ``baseline``, a config
    file's config, else the config of that name (:func:`stagevar.preset`, relative names against
    the model's family preset, or the preset ``family_default()`` names); errors name the accepted
    methods."""
    if name == BASELINE_NAME:
        return BASELINE
    if name.endswith(".json") or os.path.isfile(name):
        try:
            return StageVARConfig.load(name)
        except FileNotFoundError:
            raise ConfigError(f"method {name!r}: no such config file") from None
    try:
        if family_default is None and model is not None:
            family_default = lambda: adapter_for(model).default_preset  # noqa: E731
        return named(name, family_default)
    except ConfigError as e:
        raise ConfigError(f"{str(e).rstrip('.')}; a method may also be 'baseline' (the unpatched call) or a "
                          f"StageVARConfig JSON file") from None


def resolve_methods(names: Sequence[str], model: Any) -> List[Method]:
    """Method names -> ``[(label, config)]``, the unpatched ``baseline`` first (added if missing:
    ratios and fidelity are against it). A JSON file is labelled by its config's name."""
    out: List[Method] = []
    for name in names:
        config = method_config(name, model)
        label = name if config is BASELINE or not name.endswith(".json") or config.name == "custom" else config.name
        out.append((label, config))
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"methods repeat a name: {labels}")
    if not out or out[0][1] is not BASELINE:
        out = [m for m in out if m[1] is not BASELINE]
        out.insert(0, (BASELINE_NAME, BASELINE))
    return out


# -- the runner ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arm:
    """One method under one executor. ``config``: a :class:`StageVARConfig`, :data:`MODEL_DEFAULT`,
    or :data:`BASELINE` for the model's own unpatched call, which has no executor (its
    ``execution`` is ``"eager"``)."""

    label: str
    config: Any
    execution: str = "eager"

    def __post_init__(self):
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"an arm's label must be a non-empty string (its row in the results), got {self.label!r}")
        if self.execution not in EXECUTIONS:
            raise ValueError(f"execution={self.execution!r} is not one of {EXECUTIONS}")
        if not (self.config is BASELINE or self.config is MODEL_DEFAULT or isinstance(self.config, StageVARConfig)):
            raise ValueError(f"arm {self.label!r}: config must be a StageVARConfig, MODEL_DEFAULT or BASELINE, got "
                             f"{self.config!r}")
        if self.config is BASELINE and self.execution != "eager":
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
    for label, config in methods:
        out.extend([Arm(label, BASELINE)] if config is BASELINE else [Arm(label, config, e) for e in executions])
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
    peaks: Dict[int, Tuple[str, float]] = field(default_factory=dict)  # arm -> (what, MiB): run_interleaved(peak_memory=True)

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
                                           for i, arm in enumerate(arms) if arm.config is not BASELINE}

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
                    desc: str = "stagevar", peak_memory: bool = False, warm_every_batch: bool = False) -> RunResult:
    """Run ``arms x rounds x batches`` interleaved and time every call.

    Args:
        model: a supported model, unpatched (it is unpatched again when this returns or raises).
        arms: the methods under their executors (:func:`arms_for`).
        batches: the generation call's keyword arguments, one dict per batch; every arm runs
            every batch with the same arguments (the same seeds) in every round.
        rounds: timed rounds. In each, every batch runs under every arm, in the given order.
        warmup: untimed calls per arm on the first batch before the first round; for an arm that
            may run CUDA graphs at least its executor's ``capture_after`` (a shape's calls before
            that run eager, that one captures), so its timed calls replay.
        on_call: told each timed call's :class:`Record` and output (after the timing).
        progress: a progress bar (tqdm when installed, else one line per call on stderr).
        peak_memory: after the rounds, one more (untimed) call per arm on the first batch under
            :class:`~.timing.PeakMemory` (a CPU's sampling thread would perturb the timed calls):
            ``RunResult.peaks``.
        warm_every_batch: the warm-up calls run every batch, not the first only (prompts of
            several lengths: each call shape is captured before the timed rounds).

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
    records: List[Record] = []
    switch = bar = None
    try:
        switch = _Switch(model, arms)
        # an arm that may run CUDA graphs warms up until its key is captured, so its timed calls replay
        warm = [max(warmup, getattr(switch.engines[i].executor, "capture_after", 0)) if i in switch.engines
                else warmup for i in range(len(arms))]
        bar = Progress(sum(warm) * (len(batches) if warm_every_batch else 1) + rounds * len(batches) * len(arms),
                       progress, desc, "call")
        with _decode_timers(adapter, batches, device) as timers:
            def call(i: int, b: int) -> Tuple[Any, Any, float]:
                switch.to(i)
                with torch.no_grad():
                    out, t = timed(lambda: getattr(model, adapter.entry_point)(**batches[b]), device)
                decode_s = timers[b].take() if timers[b] is not None else 0.0
                bar.step(f"{arms[i].name}: {t.wall_s * 1e3:.0f} ms")
                return out, t, decode_s

            for w in range(max(warm)):
                for b in range(len(batches) if warm_every_batch else 1):
                    for i in range(len(arms)):
                        if w < warm[i]:
                            call(i, b)
            for r in range(rounds):
                for b in range(len(batches)):
                    for i, arm in enumerate(arms):
                        out, t, decode_s = call(i, b)
                        rep = api.last_report(model) if arm.config is not BASELINE else None
                        rec = Record(arm=i, round=r, batch=b, wall_s=t.wall_s, host_s=t.host_s, decode_s=decode_s,
                                     report=rep)
                        records.append(rec)
                        if on_call is not None:
                            on_call(rec, out)
            peaks: Dict[int, Tuple[str, float]] = {}
            for i in range(len(arms) if peak_memory else 0):
                switch.to(i)
                with torch.no_grad(), PeakMemory(device) as peak:
                    getattr(model, adapter.entry_point)(**batches[0])
                if timers[0] is not None:
                    timers[0].take()
                peaks[i] = (peak.kind, peak.mib)
    finally:
        if bar is not None:
            bar.close()
        if switch is not None:
            switch.close()
        else:
            api.restore(model)
    return RunResult(arms=list(arms), records=records, rounds=rounds, warmup=warmup, peaks=peaks)


__all__ = ["Method", "METHODS_HELP", "BASELINE", "MODEL_DEFAULT", "method_config", "resolve_methods", "Arm", "arms_for",
           "check_executions", "Record", "RunResult", "run_interleaved"]
