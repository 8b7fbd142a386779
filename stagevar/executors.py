"""How the planned scales of a call are launched: eagerly, or replayed from CUDA graphs.

:class:`EagerExecutor` runs :meth:`Engine.run_scale` for each scale (the only executor on a CPU).

:class:`GraphExecutor` captures one ``torch.cuda.CUDAGraph`` per scale index, in order, for each
*key* -- everything that fixes the shapes and the work of a call: the plan, the batch, the config,
dtype and autocast state, the call's scalar arguments (CFG weights, temperatures, top-k/p, ...),
the text length (or its bucket, see :meth:`Engine._text_bucket`), and a fingerprint of the model
(block identities, parameter storage, the sampling functions in use). Every key of a model on one
device captures into one shared pool (calls into a model run one at a time, so no two keys' graphs
run at once, and a key's temporaries are reused by the next key's capture). A key's first calls
run eagerly; its ``capture_after``-th (3 by default) captures, on the device's own capture stream,
replays, and compares the final tensors after every scale, the result and the loop's final codes
with an eager run by ``torch.equal``: any difference, an empty graph for a scale that computes, or
an error in capture, in that eager run or in a later replay, keeps the key eager (one warning
naming the first scale and tensor that differed; its graphs freed, the pool too if no key uses it).
The graphs read buffers and a sampling generator the executor owns: later calls build
their inputs eagerly (labels, text, condition), copy them into those buffers (the caller's tensors
are never written), carry the states of the call's seeded sampling and projection generators
over to the executor's, replay scale by scale, recording events between replays for the per-scale
report, and copy the sampling generator's state back (``model.rng`` ends where an eager call
leaves it). Graphs are dropped only once their queued replays have run. The report counts, per
key, its calls, captures, replays and eager calls, and its pool growth.

A call without a seed (``g_seed=None``) stays eager: its sampling draws from the global
generator, which a replay could not reproduce. Graphs live in a per-model LRU (``max_keys``; by
default what free device memory allows), freed by :func:`stagevar.restore` and :func:`stagevar.release_graphs`; copies of the
model never carry them.
"""
from __future__ import annotations

import collections
import dataclasses
import time
import warnings
from typing import Any, Callable, List, Optional, Tuple

import torch

from ._warnings import warn_at_caller
from .engine import Call, CallRecorder, EagerExecutor, Engine, Executor, autocast_state, first_difference, outputs_equal
from .report import Timeline

EXECUTIONS = ("auto", "eager", "graphs")


class GraphsUnavailableError(RuntimeError):
    """``execution="graphs"`` was asked for where CUDA graphs cannot run; the message says why."""


class EmptyGraphError(RuntimeError):
    """A capture recorded no kernel: a failure for a scale that computes, nothing to replay for a
    skipped scale that does no work."""


class GraphFallbackWarning(UserWarning):
    """A key's CUDA graphs failed to capture or replay, or were not exact; that key runs eagerly."""


# -- the tensors and the signature of a call's state ---------------------------------------------
_UNKEYED = frozenset({"g_seed", "rng"})  # the seed and its generator vary per call, never part of a key


def _flatten(value: Any, out: List[torch.Tensor]) -> None:
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _flatten(v, out)
    elif isinstance(value, dict):
        for k in sorted(value, key=repr):
            _flatten(value[k], out)


def state_tensors(st: Any) -> List[torch.Tensor]:
    """The distinct tensors of an adapter's call state (a dataclass), in field order (a tensor two
    fields share, e.g. a condition that is its own projection, is listed once)."""
    out: List[torch.Tensor] = []
    for f in dataclasses.fields(st):
        if f.name not in _UNKEYED:
            _flatten(getattr(st, f.name), out)
    seen, distinct = set(), []
    for t in out:
        if id(t) not in seen:
            seen.add(id(t))
            distinct.append(t)
    return distinct


def _signature(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.stride(), value.dtype, str(value.device))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Generator):
        return ("generator",)
    if isinstance(value, (list, tuple)):
        return tuple(_signature(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return ("set",) + tuple(sorted((_signature(v) for v in value), key=repr))
    if isinstance(value, dict):
        return ("dict",) + tuple(sorted(((repr(k), _signature(v)) for k, v in value.items()), key=repr))
    if isinstance(value, torch.nn.Module):  # e.g. Infinity's VAE: its identity and its storage
        return ("module", id(value), tuple(t.data_ptr() for t in value.parameters()))
    return ("object", id(value))


def state_signature(st: Any) -> tuple:
    """Everything but the seed that fixes a call's work: scalars by value, tensors by layout."""
    return tuple((f.name, _signature(getattr(st, f.name))) for f in dataclasses.fields(st) if f.name not in _UNKEYED)


# -- graph backends ------------------------------------------------------------------------------
class Bindings:
    """What a scale function reads and rebinds in Python: the adapter state's fields and the
    engine call's per-unit outputs and branch. Real graphs ignore it (a replay runs no Python);
    a backend that stands in for graphs by re-running Python rebinds to what capture saw."""

    def __init__(self, call: Call, model: Any = None):
        self.call, self.model = call, model

    def save(self) -> dict:
        c = self.call
        return dict(st=dict(vars(c.st)), unit_out=list(c.unit_out), branch=c.branch)

    def load(self, saved: dict) -> None:
        c = self.call
        vars(c.st).update(saved["st"])
        c.unit_out, c.branch = list(saved["unit_out"]), saved["branch"]


class CudaGraphBackend:
    """``torch.cuda.CUDAGraph`` capture and replay, generators registered graph-safe."""

    name = "cuda"

    def unavailable(self, device: torch.device) -> Optional[str]:
        if device.type != "cuda":
            return f"CUDA graphs need a CUDA device; this model is on {device}"
        if not torch.cuda.is_available():
            return "CUDA is not available in this process"
        if _torch_version() < (2, 6):  # multinomial, which every sampler draws with, is capture-safe from 2.6
            return f"torch {torch.__version__} cannot capture torch.multinomial in a CUDA graph; graphs need torch >= 2.6"
        if _torch_version() < (2, 14) and not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
            return (f"torch {torch.__version__} has no graph-safe generators (CUDAGraph.register_generator_state); "
                    f"graphs need a newer torch")
        return None

    def new_pool(self, device: torch.device) -> Any:
        return torch.cuda.graph_pool_handle()

    def reserved(self, device: torch.device) -> int:
        """Memory the caching allocator holds on ``device`` once its unused cache is returned (capture
        does that itself, ``torch.cuda.graph`` empties the cache on entry: read before and after the
        captures, the difference is the key's pool)."""
        with torch.cuda.device(device):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            return torch.cuda.memory_reserved(device)

    def __init__(self):
        self._streams: dict = {}  # device index -> the capture stream (made, and warmed up, once)

    def free(self, device: torch.device) -> int:
        """Free memory on ``device`` (bytes), as the driver reports it."""
        with torch.cuda.device(device):
            return int(torch.cuda.mem_get_info()[0])

    def _stream(self, device: torch.device) -> "torch.cuda.Stream":
        """The device's capture stream; on first use, one warm-up on it (a matrix product and a
        softmax), so that lazily made per-stream state (cuBLAS workspaces) is not made in a capture."""
        index = device.index if device.index is not None else torch.cuda.current_device()
        stream = self._streams.get(index)
        if stream is None:
            stream = torch.cuda.Stream(device=index)
            stream.wait_stream(torch.cuda.current_stream(index))
            with torch.cuda.stream(stream):
                a = torch.ones(64, 64, device=device)
                (a @ a).softmax(-1)
            stream.synchronize()
            self._streams[index] = stream
        return stream

    def capture(self, fn: Callable[[], None], pool: Any, generators: List[torch.Generator], bindings: Bindings,
                device: torch.device) -> Any:
        """One graph of ``fn``, captured on the device's own stream inside ``torch.cuda.device``;
        the current stream is restored whatever happens (``torch.cuda.graph`` leaves its stream
        current when ending the capture raises). Raises :class:`EmptyGraphError` when nothing was
        recorded (a capture on the wrong device or stream records nothing)."""
        with torch.cuda.device(device):
            current = torch.cuda.current_stream()
            stream = self._stream(device)
            graph = torch.cuda.CUDAGraph()
            if _torch_version() < (2, 14):  # later torch registers the generators a capture draws from itself
                for gen in generators:
                    graph.register_generator_state(gen)
            stream.wait_stream(current)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                        fn()
            finally:
                torch.cuda.set_stream(current)
                current.wait_stream(stream)
            for w in caught:
                if "graph is empty" in str(w.message).lower():
                    raise EmptyGraphError("the captured CUDA graph is empty (no kernel was recorded)")
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return graph

    def replay(self, graph: Any) -> None:
        graph.replay()

    def wait(self, device: torch.device) -> None:
        """Until the replays queued on ``device`` have run (before their graphs are dropped)."""
        torch.cuda.current_stream(device).synchronize()

    def release(self) -> None:
        torch.cuda.empty_cache()


def _torch_version() -> tuple:
    parts = []
    for part in torch.__version__.split("+")[0].split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


@dataclasses.dataclass
class _Entry:
    """One key's graphs and the tensors they were captured on."""

    calls: int = 0
    captures: int = 0
    replays: int = 0
    eager: int = 0
    graphs: Optional[List[Any]] = None
    call: Optional[Call] = None              # the captured call: its state holds the final tensors
    rng: Optional[torch.Generator] = None    # the executor's own sampling generator, registered with the graphs
    static: Optional[List[torch.Tensor]] = None  # the captured call's inputs, copied into per call
    pool: Any = None
    stats: Any = None                        # the captured call's PlanStats: fixed per key
    capture_s: float = 0.0
    pool_bytes: int = 0
    failed: str = ""

    def drop_graphs(self) -> None:
        """Let go of the graphs, the tensors they were captured on and their pool."""
        self.graphs = self.call = self.static = self.pool = self.stats = self.rng = None


class GraphExecutor:
    """Captures and replays one CUDA graph per scale index (see the module docstring).

    Args:
        execution: ``"auto"`` (eager wherever graphs cannot run or are not exact) or ``"graphs"``
            (raise :class:`GraphsUnavailableError` instead, saying why).
        backend: what captures and replays (:class:`CudaGraphBackend`; tests pass a stand-in).
        max_keys: keys kept, least recently used evicted. None: as many as free device memory
            allows, at most :data:`AUTO_MAX_KEYS` -- after a device's first capture, the free memory
            over that key's pool growth (each further key may need as much), at least 2.
        capture_after: a key is captured on its ``capture_after``-th call (the ones before run
            eagerly): a call shape seen once or twice costs no capture.
    """

    name = "graphs"

    def __init__(self, execution: str = "auto", backend: Any = None, max_keys: Optional[int] = None,
                 capture_after: int = 3):
        if execution not in ("auto", "graphs"):
            raise ValueError(f"execution={execution!r}: expected 'auto' or 'graphs'")
        check_max_keys(max_keys)
        check_capture_after(capture_after)
        self.execution = execution
        self.backend = backend if backend is not None else CudaGraphBackend()
        self.max_keys = max_keys
        self.capture_after = capture_after
        self._entries: "collections.OrderedDict[tuple, _Entry]" = collections.OrderedDict()
        self._pools: dict = {}       # device -> the graph pool every key on it captures into
        self._auto_keys: dict = {}   # device -> the key limit free memory allowed after its first capture

    # copies of the model (deepcopy, pickle) never carry graphs
    def __deepcopy__(self, memo: dict) -> "GraphExecutor":
        return GraphExecutor(self.execution, self.backend, self.max_keys, self.capture_after)

    def __getstate__(self) -> dict:
        return dict(execution=self.execution, backend=self.backend, max_keys=self.max_keys,
                    capture_after=self.capture_after)

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    @property
    def keys(self) -> List[tuple]:
        return list(self._entries)

    def release(self) -> None:
        """Free every key's graphs and pools (once their queued replays have run)."""
        had = [e for e in self._entries.values() if e.graphs is not None]
        if had:
            self._wait(had[0])
        self._entries.clear()
        self._pools.clear()
        if had:
            self.backend.release()

    def _wait(self, entry: _Entry) -> None:
        """Graphs are dropped only after their replays have run (their generator seeds and pool are
        freed with them, which a queued replay still reads)."""
        wait = getattr(self.backend, "wait", None)
        if wait is not None and entry.call is not None:
            wait(entry.call.gen.device)

    def counts(self) -> dict:
        """Per key (in LRU order): its calls, captures, replays and eager calls, and how much its
        capture grew the device's shared graph pool (bytes)."""
        return {i: dict(calls=e.calls, captures=e.captures, replays=e.replays, eager=e.eager, pool_bytes=e.pool_bytes)
                for i, e in enumerate(self._entries.values())}

    def key_limit(self, device: torch.device) -> int:
        """The keys kept for ``device``: ``max_keys``, or what free memory allowed (see the class)."""
        if self.max_keys is not None:
            return self.max_keys
        return self._auto_keys.get(str(device), AUTO_MAX_KEYS)

    def _drop(self, entry: _Entry, release: bool = False) -> None:
        """Let go of one key's graphs once its replays have run; the pool goes with the last graphs
        that use it. ``release``: return the allocator's cache even where the key held no graphs
        (after a failed capture, whose partial graphs are freed)."""
        had = entry.graphs is not None
        if had:
            self._wait(entry)
        entry.drop_graphs()
        if not any(e.graphs is not None for e in self._entries.values()):
            self._pools.clear()
        if had or release:
            self.backend.release()

    def _pool(self, device: torch.device) -> Any:
        pool = self._pools.get(str(device))
        if pool is None:
            pool = self._pools[str(device)] = self.backend.new_pool(device)
        return pool

    # ------------------------------------------------------------------------------------------
    def _refuse(self, reason: str) -> None:
        if self.execution == "graphs":
            raise GraphsUnavailableError(f"stagevar: execution='graphs' cannot run this call: {reason}. "
                                         f"Use execution='auto' to fall back to eager, or fix the cause.")

    def call_reason(self, engine: Engine, call: Call) -> str:
        """Why this call cannot be replayed from graphs ('' if it can); the device was checked by :meth:`run`."""
        if call.st.g_seed is None:
            return "unseeded call (g_seed=None): a replay cannot reproduce the global generator's draws"
        if getattr(call.st, "rng", None) is None:
            return "the call has no sampling generator of its own"
        if not engine.reducer.graphable and any(p.lowrank and not p.skipped for p in call.plans):
            return f"reducer={engine.config.reducer!r} cannot be captured"
        return engine.adapter.graph_reason(call.st, call.plans)

    def key(self, engine: Engine, call: Call) -> tuple:
        ad = engine.adapter
        # inference mode too: tensors captured under it cannot be copied into outside it (grad mode
        # needs no place: the engine always runs under no_grad)
        return (engine.config, tuple(call.plans), state_signature(call.st), autocast_state(ad.device()),
                torch.is_inference_mode_enabled(), ad.fingerprint())

    def run(self, engine: Engine, args: tuple, kwargs: dict) -> Any:
        self._entry: Optional[_Entry] = None
        try:
            return self._run(engine, args, kwargs)
        finally:
            report, entry = engine.unread_report(), self._entry
            if report is not None and entry is not None:  # what this call's key has done so far
                report.key_counts = dict(calls=entry.calls, captures=entry.captures, replays=entry.replays,
                                         eager=entry.eager)

    def _run(self, engine: Engine, args: tuple, kwargs: dict) -> Any:
        t0 = time.perf_counter()
        engine.last_report = None
        reason = self.backend.unavailable(engine.adapter.device())
        if reason:
            self._refuse(reason)
            return engine.run_eager(args, kwargs)
        call = engine.setup(args, kwargs)
        ended = False
        try:
            reason = self.call_reason(engine, call)
            if reason:
                self._refuse(reason)
                return engine.loop_eager(call, t0, note=reason)
            key = self.key(engine, call)
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
                while len(self._entries) > self.key_limit(call.gen.device):
                    _, old = self._entries.popitem(last=False)
                    self._drop(old)
            self._entries.move_to_end(key)
            self._entry = entry
            entry.calls += 1
            if entry.failed:
                entry.eager += 1
                return engine.loop_eager(call, t0, note=f"graphs off for this key: {entry.failed}")
            if entry.graphs is None and entry.calls < self.capture_after:
                entry.eager += 1
                when = "the next call" if entry.calls == self.capture_after - 1 else f"call {self.capture_after}"
                return engine.loop_eager(call, t0, note=f"call {entry.calls} of this key runs eager ({'first call; ' if entry.calls == 1 else ''}"
                                                        f"{when} captures)")
            if entry.graphs is None:
                ended = True  # _capture ends the call
                return self._capture(engine, entry, call, args, kwargs, t0)
            error = ""
            try:
                timeline = self._bind_and_replay(engine, entry, call)
            except Exception as e:  # noqa: BLE001 -- this call (anew), and the key from now on, run eagerly
                error = f"replay failed ({type(e).__name__}: {e})"
            if error:  # outside the except: its traceback no longer holds the graphs
                ended = True
                return self._fall_back(engine, entry, call, error, args, kwargs)
            return self._finish_replay(engine, entry, timeline, t0, call.text)
        finally:
            if not ended:
                engine.end(call)

    def _fail(self, entry: _Entry, why: str) -> None:
        entry.failed = why
        self._drop(entry, release=True)
        warn_at_caller(f"stagevar: CUDA graphs disabled for this call shape, which runs eagerly from now on: {why}",
                       GraphFallbackWarning)

    def _fall_back(self, engine: Engine, entry: _Entry, call: Call, why: str, args: tuple, kwargs: dict) -> Any:
        """End ``call``, turn its key's graphs off, and run the call anew, eagerly."""
        engine.end(call)
        self._fail(entry, why)
        entry.eager += 1
        return engine.run_eager(args, kwargs, note=f"graphs off for this key: {entry.failed}")

    def _capture(self, engine: Engine, entry: _Entry, call: Call, args: tuple, kwargs: dict,
                 t0: float) -> Any:
        """Capture every scale of ``call``, replay it, and check the result against an eager run.
        Ends ``call`` (its adapter's ``end``) whatever happens."""
        ad = engine.adapter
        device = ad.device()
        graphs: List[Any] = []
        replayed: List[Tuple[int, List[torch.Tensor]]] = []  # (si, final tensors) after each computed scale replayed
        error = ""
        user_rng = call.st.rng
        try:
            # the graphs read and write buffers and a sampling generator the executor owns: later replays
            # copy into them, so the caller's tensors (a prompt's text, cu_seqlens) and generator
            # (model.rng) are never the graphs' own
            _own_inputs(call.st)
            call.st.rng = entry.rng = torch.Generator(device=user_rng.device)
            entry.rng.set_state(user_rng.get_state())
            static = state_tensors(call.st)
            generators = [call.st.rng, call.gen]
            bindings = Bindings(call, ad.model)
            reserved0 = self.backend.reserved(device)
            t_cap = time.perf_counter()
            pool = self._pool(device)
            torch.clear_autocast_cache()  # casts read by a graph must be made inside the graphs
            try:
                for p in call.plans:
                    try:
                        graphs.append(self.backend.capture(lambda p=p: engine.run_scale(call, p), pool, generators,
                                                           bindings, device))
                    except EmptyGraphError:
                        if not p.skipped:  # a computed scale that recorded nothing: captured on the wrong stream
                            raise
                        graphs.append(None)  # a skipped scale with nothing to do (the last one): nothing to replay
            finally:
                torch.clear_autocast_cache()
            capture_s = time.perf_counter() - t_cap
            entry.graphs, entry.call, entry.static, entry.pool = graphs, call, static, pool
            entry.stats = engine.stats(call)
            entry.capture_s, entry.pool_bytes = capture_s, max(0, self.backend.reserved(device) - reserved0)
            self._set_auto_limit(device, entry.pool_bytes)
            timeline = self._bind_and_replay(engine, entry, call, fresh=False, snapshots=replayed)
        except Exception as e:  # noqa: BLE001 -- any capture (or first replay) failure: eager for this key
            error = f"capture failed ({type(e).__name__}: {e})"
        except BaseException:
            engine.end(call)
            raise
        if error:  # outside the except: its traceback no longer holds the partial graphs and their pool
            graphs.clear()
            replayed.clear()
            pool = None
            user_rng.set_state(call.st.rng.get_state())
            return self._fall_back(engine, entry, call, error, args, kwargs)
        try:
            out = self._finish_replay(engine, entry, timeline, t0)
            final = [t.clone() for t in ad.final_tensors(call.st)]
        finally:
            engine.end(call)
        after = entry.rng.get_state()  # where the replayed call left the sampling generator
        report = engine.unread_report()
        ref_final: List[torch.Tensor] = []  # the same call, eagerly: its output and its final tensors
        snapshots = CallRecorder(ad, outputs=False)
        error = ""
        try:
            reference = engine.run_eager(args, kwargs, observer=snapshots,
                                         before_end=lambda c: ref_final.extend(ad.final_tensors(c.st)))
        except Exception as e:  # noqa: BLE001 -- out of memory beside the new graphs, say: drop them, run again
            error = f"the eager reference run beside the new graphs failed ({type(e).__name__}: {e})"
        if error:
            self._fail(entry, error)
            entry.eager += 1
            return engine.run_eager(args, kwargs, note=f"graphs off for this key: {entry.failed}")
        where = (_first_scale_difference(replayed, snapshots.after)
                 or first_difference(out, reference, "output") or first_difference(final, ref_final, "final tensor"))
        if where:
            self._fail(entry, f"the replayed call differs from the eager call (torch.equal) at {where}")
            engine.note(f"graphs off for this key: {entry.failed}")
            entry.eager += 1
            return reference
        user_rng.set_state(after)  # the replayed call's result is returned: so is its generator's state
        entry.captures += 1
        report.note = "captured in this call, checked against eager"
        engine.last_report = report
        return out

    @staticmethod
    def _copy_inputs(static: List[torch.Tensor], new: List[torch.Tensor]) -> None:
        """This call's inputs into the tensors the graphs were captured on."""
        if len(new) != len(static) or any(d.shape != s.shape for d, s in zip(static, new)):
            raise RuntimeError(f"stagevar: this call's input tensors do not match its graphs' "
                               f"({[tuple(t.shape) for t in new]} vs {[tuple(t.shape) for t in static]}); "
                               f"please report this with the model class")
        for dst, src in zip(static, new):
            if dst is not src:
                dst.copy_(src)

    def _set_auto_limit(self, device: torch.device, grew: int) -> None:
        """After a device's first capture: the keys that free memory allows (``max_keys=None``)."""
        free = getattr(self.backend, "free", None)
        if self.max_keys is not None or str(device) in self._auto_keys or free is None or grew <= 0:
            return
        self._auto_keys[str(device)] = max(2, min(AUTO_MAX_KEYS, int(free(device)) // grew))

    def _bind_and_replay(self, engine: Engine, entry: _Entry, call: Call, fresh: bool = True,
                         snapshots: Optional[List[Tuple[int, List[torch.Tensor]]]] = None) -> Timeline:
        """Replay ``entry``'s graphs on ``call``'s inputs (copied into the captured ones) and its
        generators' states; returns the marks between the replays. ``snapshots`` (the capture's
        check) gets a copy of the final tensors after each computed scale."""
        captured = entry.call
        if fresh:
            self._copy_inputs(entry.static, state_tensors(call.st))
        # The generators registered with the graphs continue from where this call's setup left its
        # own (seeded, then advanced by whatever setup drew, e.g. upstream VAR's random labels).
        for registered, own in ((captured.st.rng, call.st.rng), (captured.gen, call.gen)):
            if registered is not own:
                registered.set_state(own.get_state())
        timeline = Timeline(engine.adapter.device())
        timeline.mark()
        for p, graph in zip(captured.plans, entry.graphs):
            if graph is not None:
                self.backend.replay(graph)
            if snapshots is not None and not p.skipped:
                snapshots.append((p.index, [t.clone() for t in engine.adapter.final_tensors(captured.st)]))
            timeline.mark()
        if fresh:  # the call's own generator (model.rng) ends where the eager call would leave it
            call.st.rng.set_state(captured.st.rng.get_state())
            entry.replays += 1
        return timeline

    def _finish_replay(self, engine: Engine, entry: _Entry, timeline: Timeline, t0: float,
                       text: Optional[tuple] = None) -> Any:
        """Decode the replayed call (eagerly) and set its report (``text``: the call's own text
        length and bucket, where the captured call's text was another length)."""
        out = engine.finish(entry.call)
        timeline.mark()
        engine.last_report = engine.make_report(entry.call, entry.stats, timeline, host_s=time.perf_counter() - t0,
                                                executor="graphs", capture_s=entry.capture_s,
                                                pool_bytes=entry.pool_bytes, text=text or entry.call.text)
        return out


#: The most keys kept with ``max_keys=None``.
AUTO_MAX_KEYS = 16


def check_max_keys(max_keys: Any) -> None:
    if max_keys is not None and (isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1):
        raise ValueError(f"max_keys={max_keys!r}: keep at least one call shape's graphs (an int >= 1), or None for "
                         f"as many as free device memory allows")


def check_capture_after(capture_after: Any) -> None:
    if isinstance(capture_after, bool) or not isinstance(capture_after, int) or capture_after < 2:
        raise ValueError(f"capture_after={capture_after!r}: a key captures on its N-th call, N >= 2 (an int; its "
                         f"first call runs eagerly)")


def _first_scale_difference(replayed: List[Tuple[int, List[torch.Tensor]]],
                            eager: List[Tuple[int, List[torch.Tensor]]]) -> str:
    """The first computed scale after which the replay's final tensors differ from the eager call's."""
    for (si, a), (_, b) in zip(replayed, eager):
        found = first_difference(a, b, "final tensor")
        if found:
            return f"scale {si}: {found}"
    return ""


def _own_inputs(st: Any) -> None:
    """Rebind every tensor of the call state to a copy the executor owns (a tensor two fields share
    stays shared), so that replays, which copy each call's inputs in, never write the caller's."""
    memo: dict = {}

    def own(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            if id(value) not in memo:
                memo[id(value)] = value.clone()
            return memo[id(value)]
        if isinstance(value, list):
            return [own(v) for v in value]
        if isinstance(value, tuple):
            return type(value)(*map(own, value)) if hasattr(value, "_fields") else tuple(own(v) for v in value)
        if isinstance(value, dict):
            return {k: own(v) for k, v in value.items()}
        return value

    for f in dataclasses.fields(st):
        if f.name not in _UNKEYED:
            setattr(st, f.name, own(getattr(st, f.name)))


def make_executor(execution: str, device: torch.device, backend: Any = None, max_keys: Optional[int] = None,
                  capture_after: int = 3) -> Executor:
    """The executor for ``execution`` on ``device``; raises where ``"graphs"`` cannot run."""
    if execution not in EXECUTIONS:
        raise ValueError(f"execution={execution!r} is not one of {EXECUTIONS}")
    check_max_keys(max_keys)
    check_capture_after(capture_after)  # under every execution: a bad value is refused whatever runs
    if execution == "eager":
        return EagerExecutor()
    backend = backend if backend is not None else CudaGraphBackend()
    reason = backend.unavailable(device)
    if reason:
        if execution == "graphs":
            raise GraphsUnavailableError(f"stagevar: execution='graphs' cannot run: {reason}. "
                                         f"Use execution='auto' (eager where graphs cannot run) or 'eager'.")
        return EagerExecutor()
    return GraphExecutor("graphs" if execution == "graphs" else "auto", backend, max_keys, capture_after)


__all__ = ["EXECUTIONS", "EagerExecutor", "GraphExecutor", "CudaGraphBackend", "GraphsUnavailableError",
           "GraphFallbackWarning", "Bindings", "make_executor", "state_tensors", "state_signature", "outputs_equal"]
