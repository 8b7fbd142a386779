"""accelerate / restore / accelerated / last_report / release_graphs: attaching the engine to a model instance."""
from __future__ import annotations

import contextlib
import copy
import functools
import threading
import types
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence, Tuple, Union

import torch

from ._warnings import warn_at_caller
from .adapters import UnsupportedModelError, adapter_for
from .config import ConfigError, StageVARConfig
from .engine import Engine
from .executors import GraphExecutor, make_executor
from .presets import named
from .report import Report

_ATTR = "_stagevar"
# attach / detach are check-then-set on a model's attributes: one at a time, whichever thread asks
_PATCHING = threading.RLock()


class ModelBusyError(RuntimeError):
    """An accelerated model was called while another thread's call into it was running, and it was
    accelerated with ``wait=False`` (one call at a time: calls share the model's KV caches)."""


@dataclass
class _Patch:
    """Everything stagevar adds to a model instance, in one attribute.

    ``lock`` serialises calls into the model (they share its blocks' KV caches): an overlapping call
    from another thread waits for it, or raises :class:`ModelBusyError` when ``wait`` is False;
    restore and re-configuration wait for a running call too."""

    engine: Engine
    entry_point: str
    wait: bool = True
    lock: Any = field(default_factory=threading.RLock)

    def __deepcopy__(self, memo: dict) -> "_Patch":
        # the copy's engine drives the copy's blocks (the model is in ``memo``); graphs never travel;
        # the copy is a model of its own, with its own lock
        return _Patch(copy.deepcopy(self.engine, memo), self.entry_point, self.wait)

    def call(self, model: Any, args: tuple, kwargs: dict) -> Any:
        if not self.lock.acquire(blocking=self.wait):
            raise ModelBusyError(
                f"stagevar: another thread is generating with this {type(model).__name__} (calls share its KV "
                f"caches, so they run one at a time); it was accelerated with wait=False, so this call is refused. "
                f"Retry later, give each thread its own model (copy.deepcopy), or accelerate with wait=True to queue")
        try:
            return self.engine(*args, **kwargs)
        finally:
            self.lock.release()

    def __reduce_ex__(self, protocol):
        raise TypeError(
            "stagevar: an accelerated model cannot be pickled (pickle / torch.save): the copy would claim to be "
            "accelerated but run the original method. Call stagevar.restore(model) first; to re-apply the "
            "acceleration after loading, save its config (stagevar.current_config(model).save('stagevar.json')) "
            "and call stagevar.accelerate(model, stagevar.StageVARConfig.load('stagevar.json')).")


def _target(model: Any) -> Any:
    """The module to patch: ``model`` itself, or the module inside a ``torch.compile`` wrapper."""
    inner = getattr(model, "_orig_mod", None)
    if inner is not None and type(model).__name__ == "OptimizedModule":
        return inner
    return model


def _config(config: Union[None, str, StageVARConfig], default_name: str) -> StageVARConfig:
    if config is None:
        return named(default_name, None)
    if isinstance(config, str):  # every name of stagevar.presets, relative ones against this model's family preset
        return named(config, lambda: default_name)
    if isinstance(config, dict):
        return StageVARConfig.from_dict(config)
    if not isinstance(config, StageVARConfig):
        raise ConfigError(f"config must be a StageVARConfig, a config name (stagevar.preset_names()) or a dict, got "
                          f"{type(config).__name__}")
    return config


def _text_buckets(value: Any, adapter: Any, graphs: bool) -> Tuple[int, ...]:
    """The text lengths a call's text is padded up to: ``value`` checked, or (None) the family's
    default under CUDA graphs and none under eager execution."""
    if value is None:
        return tuple(adapter.default_text_buckets()) if graphs else ()
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise TypeError(f"stagevar.accelerate: text_buckets must be a tuple of text lengths, e.g. (64, 128, 256, 512), "
                        f"or () for none; got {value!r}")
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        raise ValueError(f"stagevar.accelerate: text_buckets={tuple(value)!r}: every length must be a positive int "
                         f"(tokens); {bad!r} is not")
    if any(b <= a for a, b in zip(value, value[1:])):
        raise ValueError(f"stagevar.accelerate: text_buckets={tuple(value)!r}: give the lengths in increasing order, "
                         f"each once")
    if value and not adapter.takes_prompts:
        raise ValueError(f"stagevar.accelerate: text_buckets={tuple(value)!r}, but a {adapter.family} model has no text "
                         f"to pad: leave text_buckets unset (or ())")
    return tuple(value)


def _engine(adapter: Any, config: Union[None, str, StageVARConfig], execution: str, capture_after: int = 3,
            text_buckets: Any = None, max_keys: Optional[int] = None) -> Engine:
    """A validated engine: the config checked against the model's schedules before anything is patched."""
    carried = getattr(adapter.model, "stagevar_config", None)
    if config is None and isinstance(carried, StageVARConfig):
        resolved, source = carried, "carried by the model: model.stagevar_config, from its checkpoint"
    elif config is None:
        resolved, source = _config(None, adapter.default_preset), f"{adapter.family} family default"
    else:
        resolved, source = _config(config, adapter.default_preset), "given"
    executor = make_executor(execution, adapter.device(), capture_after=capture_after, max_keys=max_keys)
    engine = Engine(adapter, resolved, executor=executor)
    engine.config_source = source
    engine.text_buckets = _text_buckets(text_buckets, adapter, isinstance(executor, GraphExecutor))
    # its schedule, or every schedule it knows (Infinity's RoPE tables), warning for the first only
    for i, schedule in enumerate(adapter.known_schedules()):
        engine.plan_for(schedule, warn=i == 0)
    return engine


def accelerate(model: Any, config: Union[None, str, StageVARConfig] = None, execution: str = "auto",
               wait: bool = True, capture_after: int = 3, text_buckets: Optional[Sequence[int]] = None,
               max_keys: Optional[int] = None) -> Any:
    """Patch ``model`` (this instance only) to generate with StageVAR.

    The model's generation method (``autoregressive_infer_cfg``) is replaced on the instance by
    one with the same signature and return value. Calling ``accelerate`` again re-configures;
    :func:`restore` puts the original back.

    Args:
        model: a loaded model with a supported interface (FoundationVision ``VAR`` or ``Infinity``).
        config: a :class:`StageVARConfig`, a config name (any of :func:`stagevar.preset_names`: a preset,
            ``fastvar``, ``cfg-only``, ``skip-last-2``, ...), or None: the config the model carries
            (``model.stagevar_config``, set by ``load_pretrained`` from a checkpoint that stores one),
            else the family's default preset. The report names where the config came from.
        execution: how the scales are launched. ``"auto"``: one CUDA graph per scale, replayed,
            on CUDA where the installed torch supports graph-safe generators and the captured
            graphs reproduce the eager call exactly; eager otherwise (always on a CPU).
            ``"eager"``: always eager. ``"graphs"``: graphs, raising where they cannot run.
            See :mod:`stagevar.executors`.
        wait: calls into one model run one at a time (they share its KV caches); a call from
            another thread while one runs waits for it (True) or raises :class:`ModelBusyError`.
        capture_after: under graphs, a call shape is captured on its ``capture_after``-th call
            (the ones before run eagerly), so a shape seen once or twice costs no capture.
        text_buckets: text-to-image families (Infinity, STAR): a call's text is padded up to the
            smallest of these lengths (tokens) that holds it, the padding masked wherever the text
            is read, so prompts of different lengths share one call shape (and one set of CUDA
            graphs). None: the family's default under graphs (Infinity: 32, 64, 128, 256 and its
            text length; STAR: none, its encoder pads every prompt to one length), none under eager.
            ``()``: off. The first call of each bucket runs padded and unpadded and keeps bucketing
            only if the two are bit-identical (else it is off for the model, with a
            :class:`TextBucketWarning`); the report names the bucket a call used.
        max_keys: under graphs, the call shapes whose graphs are kept (least recently used
            dropped). None: as many as free device memory allows (after the first capture, free
            memory over that shape's pool growth; 2 to 16). All shapes on a device capture into
            one shared pool, so graph memory is about the largest shape's, not the sum.

    Returns:
        ``model``.

    Raises:
        UnsupportedModelError: ``model`` has no supported interface (names what is missing), or
            its entry point is overridden by a subclass or set on the instance (stagevar would
            bypass it).
        ConfigError: the config is invalid for this model (says what to change). The model is
            left as it was.
        GraphsUnavailableError: ``execution="graphs"`` where graphs cannot run (says why).
    """
    wrapper, model = model, _target(model)
    if model is not wrapper:
        warn_at_caller("stagevar: accelerating the module inside this torch.compile wrapper (its _orig_mod); generation "
                       "runs stagevar's loop, not the compiled forward (torch.compile does not compile "
                       "autoregressive_infer_cfg either)", UserWarning)
    if not isinstance(wait, bool):
        raise TypeError(f"stagevar.accelerate: wait must be True or False, got {wait!r}")
    with _PATCHING:
        patch: Optional[_Patch] = getattr(model, _ATTR, None)
        adapter = patch.engine.adapter if patch is not None else adapter_for(model)
        replaced = attach(model, _engine(adapter, config, execution, capture_after, text_buckets, max_keys))
        getattr(model, _ATTR).wait = wait
    if replaced is not None:
        release_engine(replaced)
    return wrapper


def _patch_of(model: Any, caller: str = "") -> Optional[_Patch]:
    """The patch ``accelerate`` put on ``model`` (inside a torch.compile wrapper too), or None;
    ``caller`` (a function's name) refuses what is not a model at all, naming that function."""
    if caller and not isinstance(model, torch.nn.Module):
        raise TypeError(f"stagevar.{caller}: model must be the torch.nn.Module you accelerated, got "
                        f"{type(model).__name__}")
    return getattr(_target(model), _ATTR, None)


def release_engine(engine: Engine) -> None:
    """Free the CUDA graphs and memory pools ``engine``'s executor captured (no-op when eager)."""
    engine.executor.release()


def release_graphs(model: Any) -> Any:
    """Free the CUDA graphs and memory pools captured for ``model`` (they are captured anew when
    needed). No-op for a model that is not accelerated or runs eagerly."""
    patch = _patch_of(model, "release_graphs")
    if patch is not None:
        release_engine(patch.engine)
    return model


def restore(model: Any) -> Any:
    """Undo :func:`accelerate`: the original generation method back, exactly; captured graphs
    freed. No-op if not patched."""
    _patch_of(model, "restore")
    engine = detach(model)
    if engine is not None:
        release_engine(engine)
    return model


def is_accelerated(model: Any) -> bool:
    return _patch_of(model) is not None


def current_config(model: Any) -> Optional[StageVARConfig]:
    """The config ``model`` is accelerated with, or None."""
    patch = _patch_of(model, "current_config")
    return None if patch is None else patch.engine.config


def engine_of(model: Any) -> Optional[Engine]:
    """The :class:`~stagevar.engine.Engine` an accelerated model runs (its config, executor, captured
    graphs and last report), or None when the model is not accelerated. For the tools (runner,
    calibration, generation) that keep an engine across switches (:func:`attach`, :func:`detach`)."""
    patch = _patch_of(model)
    return None if patch is None else patch.engine


def build_engine(model: Any, config: Union[None, str, StageVARConfig] = None, execution: str = "auto",
                 capture_after: int = 3, text_buckets: Optional[Sequence[int]] = None,
                 max_keys: Optional[int] = None) -> Engine:
    """The engine :func:`accelerate` would install (config resolved and checked against the
    model's schedules), without installing it: for the tools that switch a model between several
    engines (:func:`attach`, :func:`detach`)."""
    return _engine(adapter_for(_target(model)), config, execution, capture_after, text_buckets, max_keys)


def attach(model: Any, engine: Engine) -> Optional[Engine]:
    """Run ``engine`` on ``model`` from its next call, patching the model if it is not accelerated.
    Returns the engine it replaces (None if there was none) with its CUDA graphs kept: the caller
    owns it (:func:`release_engine` frees them). ``engine`` must drive this model's adapter. A
    call running in another thread finishes first."""
    model = _target(model)
    if engine.adapter.model is not model:
        raise ValueError("stagevar.api.attach: this engine drives another model; build the engine on this one "
                         "(stagevar.api.build_engine(model, config))")
    with _PATCHING:
        patch: Optional[_Patch] = getattr(model, _ATTR, None)
        if patch is not None:
            with patch.lock:
                before, patch.engine = patch.engine, engine
            return before
        entry = engine.adapter.entry_point
        _refuse_bypassed_entry(model, entry)
        original = getattr(type(model), entry)

        @functools.wraps(original)
        def accelerated_entry(self, *args, **kwargs):
            return getattr(self, _ATTR).call(self, args, kwargs)

        object.__setattr__(model, _ATTR, _Patch(engine=engine, entry_point=entry))
        # A bound method (not a closure over `model`), so copy.deepcopy rebinds it to the copy.
        object.__setattr__(model, entry, types.MethodType(accelerated_entry, model))
        return None


def _refuse_bypassed_entry(model: Any, entry: str) -> None:
    """An entry point stagevar would bypass is refused: one set on the instance (a wrapper, a
    ``functools.partial``) or a subclass's override of the family's method (a fork that post-processes)."""
    name = type(model).__name__
    if entry in vars(model):
        raise UnsupportedModelError(
            f"{name}.{entry} is set on this instance ({type(vars(model)[entry]).__name__}, e.g. a wrapper or a "
            f"functools.partial): while accelerated, stagevar would run its own loop and bypass it. Remove it first "
            f"(del model.{entry}) and pass its arguments in the call, or generate without stagevar")
    owners = [klass for klass in type(model).__mro__ if entry in vars(klass)]
    if len(owners) > 1:
        raise UnsupportedModelError(
            f"{owners[0].__name__}.{entry} overrides {owners[1].__name__}.{entry}: stagevar runs the loop of "
            f"{owners[1].__name__}'s method and would skip what the override adds, under every config ('none' "
            f"too). Accelerate a {owners[1].__name__} instance and apply the override's extra steps to its output, "
            f"or generate without stagevar")


def detach(model: Any) -> Optional[Engine]:
    """The original generation method back, as :func:`restore` does, but the engine that ran is
    returned with its CUDA graphs instead of freed (None if the model was not accelerated). Waits
    for a call running in another thread."""
    model = _target(model)
    with _PATCHING:
        patch: Optional[_Patch] = getattr(model, _ATTR, None)
        if patch is None:
            return None
        with patch.lock:
            if patch.entry_point in vars(model):
                object.__delattr__(model, patch.entry_point)
            object.__delattr__(model, _ATTR)
            patch.engine.adapter.end(None)  # caches off, condition wrappers out, whatever a call left behind
        return patch.engine


@contextlib.contextmanager
def accelerated(model: Any, config: Union[None, str, StageVARConfig] = None, execution: str = "auto",
                wait: bool = True, text_buckets: Optional[Sequence[int]] = None, capture_after: int = 3,
                max_keys: Optional[int] = None) -> Iterator[Any]:
    """Scoped :func:`accelerate` (the same arguments); on exit the model is as it was (restored, or
    its earlier config, engine and last report). A :func:`restore` inside the block is kept."""
    patch = _patch_of(model)
    if patch is None:
        accelerate(model, config, execution=execution, wait=wait, text_buckets=text_buckets,
                   capture_after=capture_after, max_keys=max_keys)
        try:
            yield model
        finally:
            restore(model)
        return
    inner = _engine(patch.engine.adapter, config, execution, capture_after, text_buckets, max_keys)
    before = attach(model, inner)
    try:
        yield model
    finally:
        release_engine(inner)
        if is_accelerated(model):  # a restore inside the block is kept
            attach(model, before)


def last_report(model: Any) -> Report:
    """Per-scale statistics of the model's last accelerated call."""
    patch = _patch_of(model, "last_report")
    if patch is None:
        raise RuntimeError("stagevar.last_report: this model is not accelerated; call stagevar.accelerate(model) first")
    if patch.engine.last_report is None:
        raise RuntimeError("stagevar.last_report: no accelerated generation has completed with the current config "
                           "(none has run yet, or the last call raised)")
    return patch.engine.last_report
