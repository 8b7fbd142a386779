"""What the engine may ask of a model family.

An adapter is the only code that knows a family's attribute names. The engine drives the scale
loop through these methods and never touches the model directly.
"""
from __future__ import annotations

import inspect
import numbers
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn


class UnsupportedModelError(TypeError):
    """The object is not a model stagevar knows how to accelerate."""


def missing_attributes(model: Any, names: Sequence[str]) -> List[str]:
    """The dotted attribute paths in ``names`` that ``model`` lacks."""
    missing = []
    for name in names:
        obj = model
        for part in name.split("."):
            if not hasattr(obj, part):
                missing.append(name)
                break
            obj = getattr(obj, part)
    return missing


@dataclass(kw_only=True)
class CallState:
    """The per-call state every adapter's :meth:`LoopAdapter.begin` returns extends (a dataclass).

    Everything a scale reads lives in it: the graph executor copies its tensors into captured
    ones and keys graphs on its other fields (all but ``g_seed`` and ``rng``, which vary per call).

    Attributes:
        B: images the call generates.
        g_seed: the call's seed (None when unseeded).
        rng: the sampling generator, seeded with exactly ``g_seed`` as upstream does (None when unseeded).
        next_x: ``(rows, M, C)`` input of the next scale to run (``rows`` = 2B with CFG).
        branch: the CFG rows the call runs now: ``"both"``, or ``"cond"`` / ``"uncond"`` once
            :meth:`LoopAdapter.keep_rows` has cut it to one branch.
        run_scales: the call stops after this many scales of its schedule (Infinity's
            ``trunk_scale``); None: it runs them all. It runs the prefix of the full call's plan.
    """

    B: int
    g_seed: Optional[int]
    rng: Optional[torch.Generator]
    next_x: Optional[torch.Tensor] = None
    branch: str = "both"
    run_scales: Optional[int] = None


#: The prompts the tools use for a text-to-image model when none are given.
DEFAULT_PROMPTS = ("a red fox in the snow", "a lighthouse on a cliff at dusk", "a bowl of ripe cherries",
                   "an astronaut riding a horse")


class ToolHooks:
    """What calibration, bench and quality ask of a family, beyond the loop.

    ``takes_prompts``: the family's conditions are prompts (with an ``encode``), not class labels."""

    takes_prompts: bool = False

    def default_conditions(self, n: int) -> list:
        """``n`` conditions for the tools when none are given: the class labels in turn, or the
        built-in prompts in turn (:data:`DEFAULT_PROMPTS`)."""
        if self.takes_prompts:
            return [DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)] for i in range(n)]
        classes = int(self.model.num_classes)  # type: ignore[attr-defined]
        return [i % classes for i in range(n)]

    def condition_kwargs(self, conditions: Sequence, encode: Optional[Any] = None) -> dict:
        """Generation-call arguments that generate one image per condition (for calibration)."""
        raise NotImplementedError

    def decode_partial(self, st: Any) -> torch.Tensor:
        """``(B, 3, H, W)`` image in [0, 1] decoded from the codes generated so far."""
        raise NotImplementedError

    def branch_logits(self, st: Any, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(cond, uncond)`` logits ``(B, M, V)`` of a scale's output ``x`` with both branches' rows."""
        raise NotImplementedError

    def decoder(self, call_kwargs: dict) -> Tuple[Any, str]:
        """``(object, attribute)`` of the decode function a call uses (for timing it apart)."""
        raise NotImplementedError

    def images_of(self, output: Any) -> torch.Tensor:
        """The generation call's output as ``(B, 3, H, W)`` float RGB images in [0, 1]."""
        raise NotImplementedError



_REGISTERED = [0, False]  # assignments of a parameter, buffer or submodule anywhere; hooks installed


def _count_registration(*args) -> None:
    _REGISTERED[0] += 1


def _registrations() -> int:
    """How many parameter, buffer and submodule assignments torch has seen (from the first call
    on): a change means some module tree may have changed."""
    if not _REGISTERED[1]:
        from torch.nn.modules import module as _module

        for name in ("register_module_parameter_registration_hook", "register_module_buffer_registration_hook",
                     "register_module_module_registration_hook"):
            getattr(_module, name)(_count_registration)
        _REGISTERED[1] = True
    return _REGISTERED[0]


class GraphHooks:
    """What the CUDA-graph executor asks of a family, with working defaults: what a captured call
    reads (its key) and what it produces (its exactness check)."""

    def helpers(self) -> Tuple[Any, ...]:
        """The sampling functions this adapter calls (part of a CUDA-graph key)."""
        return ()

    def graph_reason(self, st: Any, plans: Sequence[Any]) -> str:
        """Why this call (its state and plan) cannot be replayed from CUDA graphs ('' if it can),
        e.g. a scale that draws from a global generator."""
        return ""

    def graphed_modules(self) -> Tuple[nn.Module, ...]:
        """The modules whose weights a captured scale reads (the model, and any module it holds
        outside its own tree, e.g. VAR's quantizer behind ``vae_quant_proxy``)."""
        return (self.model,)

    def fingerprint(self) -> tuple:
        """Identity of what a captured call runs: the blocks, every parameter and buffer's storage
        in :meth:`graphed_modules`, the sampling functions. A swapped block or reloaded weights
        (new storage) change it; weights loaded in place (``load_state_dict``) do not, and need not:
        a replay reads them where they are. Computed on every call: the walk over the module tree
        is cached until a parameter, buffer or submodule is assigned anywhere (torch's global
        registration hooks count those), so a call reads only each tensor's storage pointer, which
        also sees ``param.data = t`` and ``model.to(...)``."""
        blocks = tuple(id(b) for b in self.blocks())
        cached = self.__dict__.get("_walk")
        if cached is None or cached[0] != _registrations() or cached[1] != blocks:
            cached = self._walk = (_registrations(), blocks, self._graphed_tensors())
        return (blocks, tuple(t.data_ptr() for t in cached[2]), tuple(id(h) for h in self.helpers()))

    def _graphed_tensors(self) -> List[torch.Tensor]:
        """Every parameter and buffer of :meth:`graphed_modules`, each module once (one flat walk
        over the modules' own tables: ``Module.parameters()`` costs several times more)."""
        out: List[torch.Tensor] = []
        stack, seen = list(reversed(self.graphed_modules())), set()
        while stack:
            mod = stack.pop()
            if id(mod) in seen:  # a module reachable twice (shared) is read once, as parameters() does
                continue
            seen.add(id(mod))
            out.extend(t for t in mod._parameters.values() if t is not None)
            out.extend(t for t in mod._buffers.values() if t is not None)
            stack.extend(c for c in mod._modules.values() if c is not None)
        return out

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_walk", None)  # a copy walks its own modules
        return state

    # -- text bucketing: prompts of different lengths share one call shape ----------------------
    def default_text_buckets(self) -> Tuple[int, ...]:
        """The text lengths a call's text is padded up to under CUDA graphs when ``accelerate`` is
        not told (``()``: none, e.g. a family without text)."""
        return ()

    def text_lengths(self, args: tuple, kwargs: dict) -> Optional[Tuple[int, ...]]:
        """The text lengths (tokens) that fix what padding a call's text does to its numerics, read
        from its arguments on the host: the longest picks the bucket, all of them key the check of
        padded against unpadded calls. None: the call has no text to pad (or bad arguments, which
        the call itself reports)."""
        return None

    def pad_text(self, st: Any, length: int) -> None:
        """Pad the call state's text to ``length`` tokens (at least its longest), the padded tokens
        masked wherever the blocks read the text, so that the call's tensors have one shape for
        every prompt up to ``length``. Called by the engine right after :meth:`begin`."""
        raise NotImplementedError(f"{type(self).__name__} has no text to pad")

    def final_tensors(self, st: Any) -> List[torch.Tensor]:
        """What the scale loop produced, before decoding (compared by the graph executor's exactness
        check as well as the output, which may hold no tensor, e.g. Infinity with ``ret_img=False``).
        Without it (an adapter that does not say) only the outputs are compared."""
        return []


class LoopAdapter:
    """What the engine's scale loop asks of a model family.

    A family writes seven methods: :meth:`blocks`, :meth:`begin`, :meth:`schedule`,
    :meth:`run_block`, :meth:`predict`, :meth:`skip_scale` and :meth:`finish`. Everything else
    has a default built on upstream's conventions -- each block's self-attention at
    ``block.<kv_attr>`` with ``kv_caching`` / ``cached_k`` / ``cached_v``, the call state's
    ``next_x`` as the next scale's input, the tensors named in ``row_fields`` cut with it to one
    CFG branch -- and is overridden where a family differs.

    Per call, :meth:`begin` returns a :class:`CallState` that holds everything the call needs;
    the adapter itself holds only the model, so nothing carries from one call into the next.
    Inside a scale (``scale_input``, ``unit_input``, ``run_block``, ``keep_rows``, ``predict``,
    ``skip_scale``) an adapter must not read a device value on the host (``.item()``, ``int(t)``)
    or build tensors from host data: compute host integers in ``begin``.
    """

    family: str = "?"
    entry_point: str = "autoregressive_infer_cfg"
    required: Tuple[str, ...] = ()
    default_preset: str = "none"
    default_unit_blocks: int = 1
    #: The attribute of each block that holds its self-attention (and KV cache).
    kv_attr: str = "attn"
    #: Call-state fields with one row per CFG row, cut to one branch with ``next_x`` (a None field is left).
    row_fields: Tuple[str, ...] = ()

    def __init__(self, model: nn.Module):
        self.model = model
        self._signature = inspect.signature(getattr(type(model), self.entry_point))

    #: Entry-point parameters the adapter reads (or knows to be without effect on the output). Any
    #: other parameter given a value other than its default -- or any extra keyword a ``**kwargs``
    #: catch-all would swallow -- is refused by :meth:`bind_call`, naming it, instead of being
    #: silently dropped. ``None``: no check.
    consumed: Optional[frozenset] = None

    def bind_call(self, args: tuple, kwargs: dict) -> dict:
        """The call's arguments by name, defaults applied (``**kwargs`` catch-alls merged in).

        Raises:
            TypeError: the arguments do not fit the signature, or a parameter stagevar does not
                implement was given a non-default value (the message names it).
        """
        try:
            bound = self._signature.bind(self.model, *args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.entry_point}{self._signature}: {e}") from None
        bound.apply_defaults()
        a = dict(bound.arguments)
        extra: dict = {}
        for name, p in self._signature.parameters.items():
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                extra = a.pop(name, {}) or {}
        if self.consumed is not None:
            params = list(self._signature.parameters.values())[1:]  # without self
            unused = [p.name for p in params if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
                      and p.name not in self.consumed and not _is_default(a.get(p.name), p.default)]
            unused += [k for k in extra if k not in self.consumed]
            if unused:
                given = ", ".join(f"{k}={(a.get(k, extra.get(k)))!r}"[:80] for k in unused)
                raise TypeError(f"stagevar's {self.family} loop does not implement {given} of {self.entry_point}: it "
                                f"would be ignored and the images would not be what you asked for. Leave "
                                f"{'it' if len(unused) == 1 else 'them'} at the default, or call "
                                f"stagevar.restore(model) to generate with the original method.")
        a.update(extra)
        for name, check in (("B", _batch_size), ("g_seed", _seed)):
            if name in a:
                a[name] = check(a[name], self.entry_point)
        return a

    def seeded_generator(self, g_seed: Optional[int]) -> Optional[torch.Generator]:
        """The model's own sampling generator (``model.rng``) seeded with ``g_seed``, as upstream does;
        a fresh one on the model's device if ``rng`` lives elsewhere (upstream creates it on CUDA
        whenever CUDA is visible, which a CPU model, or one on another GPU, cannot use). None when
        unseeded."""
        if g_seed is None:
            return None
        rng = getattr(self.model, "rng", None)
        if not isinstance(rng, torch.Generator) or rng.device != self.device():
            rng = torch.Generator(device=self.device())
        rng.manual_seed(g_seed)
        return rng

    @classmethod
    def missing(cls, model: Any) -> List[str]:
        return missing_attributes(model, cls.required)

    # -- what a family writes ---------------------------------------------------------------
    def blocks(self) -> List[nn.Module]:
        """Transformer blocks in execution order."""
        raise NotImplementedError

    def begin(self, args: tuple, kwargs: dict, cache_condition: bool = False) -> Any:
        """Bind the call's arguments, prepare the first scale's input, turn caches on.

        ``cache_condition``: compute per-block condition projections once per call (exact).
        """
        raise NotImplementedError

    def schedule(self, st: Any) -> List[Tuple[int, int]]:
        """The ``(h, w)`` schedule of this call."""
        raise NotImplementedError

    def run_block(self, st: Any, block: nn.Module, x: torch.Tensor, si: int,
                  positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Run one block on ``x`` (``(rows, n, C)``); ``positions`` ``(rows, n)`` are the scale-local
        positions of the ``n`` tokens when they are not ``0..M-1`` (low-rank units)."""
        raise NotImplementedError

    def predict(self, st: Any, si: int, x: torch.Tensor) -> torch.Tensor:
        """Logits, guidance, sampling, and the next scale's input from scale ``si``'s output.
        Returns the sampled token ids (``(B, M)``, or ``(B, M, bits)`` for a bitwise head)."""
        raise NotImplementedError

    def skip_scale(self, st: Any, si: int) -> None:
        """Scale ``si`` is not run: prepare the next input from what was generated so far."""
        raise NotImplementedError

    def finish(self, st: Any) -> Any:
        """Decode and return exactly what the original entry point returns."""
        raise NotImplementedError

    # -- defaults ----------------------------------------------------------------------------
    def default_schedule(self) -> Optional[List[Tuple[int, int]]]:
        """The ``(h, w)`` schedule the model runs when the call does not choose one (None: chosen per call)."""
        return None

    def known_schedules(self) -> List[List[Tuple[int, int]]]:
        """Schedules to check a config against when it is attached (the default one, if any)."""
        sched = self.default_schedule()
        return [] if sched is None else [sched]

    def device(self) -> torch.device:
        """Where the model runs: its first parameter's device."""
        return next(self.model.parameters()).device

    def check_units(self, units: Sequence[Tuple[int, int]]) -> None:
        """Raise ``ConfigError`` if the model cannot run these ``[lo, hi)`` block units."""

    def check_plan(self, plans: Sequence[Any]) -> None:
        """Raise ``ConfigError`` if the model cannot run this resolved plan (e.g. low rank on a text prefix)."""

    def scale_input(self, st: Any, si: int) -> torch.Tensor:
        """``(rows, M, C)`` input of scale ``si``: the call state's ``next_x``."""
        return st.next_x

    def unit_input(self, st: Any, si: int, first_block: int, x: torch.Tensor) -> torch.Tensor:
        """What the model adds to the residual stream before block ``first_block`` (a unit start),
        e.g. a level embedding; applied before any projection."""
        return x

    def keep_rows(self, st: Any, branch: str) -> None:
        """Cut the call to one CFG branch: every block's KV cache, ``next_x`` and the ``row_fields``."""
        for block in self.blocks():
            attn = getattr(block, self.kv_attr)
            if attn.cached_k is not None:
                attn.cached_k = select_rows(attn.cached_k, st.B, branch)
                attn.cached_v = select_rows(attn.cached_v, st.B, branch)
        for name in ("next_x",) + self.row_fields:
            value = getattr(st, name)
            if value is not None:
                setattr(st, name, select_rows(value, st.B, branch))
        st.branch = branch

    def end(self, st: Any) -> None:
        """Always called (in a ``finally``): caches off and emptied, whatever ``begin`` installed
        undone. ``st`` is None when ``begin`` itself failed, or on ``restore``: undo from the model alone."""
        for block in self.blocks():
            getattr(block, self.kv_attr).kv_caching(False)

    # -- the debug check (STAGEVAR_DEBUG=1) ---------------------------------------------------
    def cache_lengths(self) -> Optional[List[Optional[Tuple[int, int]]]]:
        """Per block ``(rows, tokens)`` held in its self-attention KV cache (None if empty); None
        for a family whose caches cannot be read this way (the check is skipped)."""
        out = []
        for block in self.blocks():
            attn = getattr(block, self.kv_attr)
            k = attn.cached_k
            out.append(None if k is None else (k.shape[0], k.shape[kv_token_dim(attn)]))
        return out


class Adapter(LoopAdapter, GraphHooks, ToolHooks):
    """Base class of model-family adapters: the loop protocol plus the tools' hooks.

    A family is one file in ``stagevar/adapters/``: subclass this, name the attributes it keys
    on in ``required``, list the entry point's parameters it reads in ``consumed``, and register
    it (:func:`stagevar.register_adapter`). See README, "Adding a model family".
    """


def _batch_size(value: Any, entry: str) -> int:
    """``B``: a positive integer (numpy's too), never a float, a bool or a tensor cut with ``int()``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{entry}: B={value!r} ({type(value).__name__}) is not a batch size: pass a positive integer, "
                         f"the number of images (and of labels or prompts)")
    return int(value)


def _seed(value: Any, entry: str) -> Optional[int]:
    """``g_seed``: None (unseeded) or an integer (numpy's too) that ``torch.Generator.manual_seed`` takes."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{entry}: g_seed={value!r} ({type(value).__name__}) is not a seed: pass an integer, or None "
                         f"for an unseeded call")
    value = int(value)
    if not -(2 ** 63) <= value < 2 ** 64:
        raise ValueError(f"{entry}: g_seed={value} is outside what torch.Generator.manual_seed takes "
                         f"(-2**63 .. 2**64 - 1)")
    return value


def _is_default(value: Any, default: Any) -> bool:
    if value is default:
        return True
    if isinstance(value, torch.Tensor) or isinstance(default, torch.Tensor) or default is inspect.Parameter.empty:
        return False
    try:
        return bool(value == default) and type(value) is type(default)
    except Exception:  # noqa: BLE001 -- values that do not compare are not the default
        return False


def kv_token_dim(attn: nn.Module) -> int:
    """Token dim of ``attn``'s KV cache: 1 under flash-attn/xformers (BLHc), 2 under SDPA (BHLc).

    Upstream picks flash only for non-fp32 tensors, so decide from the cached dtype as it does.
    """
    k = attn.cached_k
    if getattr(attn, "using_xform", False):
        return 1
    if getattr(attn, "using_flash", False) and k is not None and k.dtype != torch.float32:
        return 1
    return 2


def select_rows(t: torch.Tensor, B: int, branch: str) -> torch.Tensor:
    """Rows of one CFG branch from a ``2B``-row tensor: ``[:B]`` cond, ``[B:]`` uncond."""
    if t.shape[0] != 2 * B:
        raise RuntimeError(f"expected {2 * B} rows (B={B}, both CFG branches), found {t.shape[0]}")
    return t[:B] if branch == "cond" else t[B:]


class MemoizedCondition(nn.Module):
    """Wraps a condition projection (e.g. a block's ``ada_lin``) for one call: the output for
    the last input tensor object is reused, so the projection runs once per distinct condition
    instead of once per scale. Exact: the same module on the same tensor."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self._key: Optional[torch.Tensor] = None
        self._value: Optional[torch.Tensor] = None

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        if cond is not self._key:
            self._key, self._value = cond, self.inner(cond)
        return self._value
