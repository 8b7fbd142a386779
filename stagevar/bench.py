"""Side-by-side measurement: the unpatched call and accelerated methods, interleaved in one run.

``interleaved`` times calls round-robin; ``run`` measures named methods (presets, cfg-only,
lowrank-only, skip-last-N, uncond-last-N, cond-last-N, fastvar, JSON configs) for time, FLOPs,
memory and fidelity.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import api
from .config import ConfigError, StageVARConfig
from .engine import Observer


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(call: Callable[[], Any]) -> float:
    """Seconds one call takes: CUDA events after a synchronisation on a GPU, the wall clock otherwise."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    t = time.perf_counter()
    call()
    return time.perf_counter() - t


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="stagevar bench", unit="call")


class DecodeTimer:
    """Wraps ``getattr(obj, attr)`` on the instance and records how long its last call took, so the
    transformer loop can be told apart from the decode (end-to-end minus decode)."""

    def __init__(self, obj: Any, attr: str):
        self.obj, self.attr = obj, attr
        self.inner = getattr(obj, attr)
        self.last = 0.0
        setattr(obj, attr, self)

    def __call__(self, *args, **kwargs):
        _sync()
        t = time.perf_counter()
        out = self.inner(*args, **kwargs)
        _sync()
        self.last = time.perf_counter() - t
        return out

    def remove(self) -> None:
        try:
            delattr(self.obj, self.attr)
        except AttributeError:
            setattr(self.obj, self.attr, self.inner)


Method = Tuple[str, Optional[StageVARConfig]]


def interleaved(model: Any, call: Callable[[], Any], methods: Sequence[Method], repeats: int,
                timer: DecodeTimer, warmup: int = 1, progress: bool = False) -> List[Dict[str, float]]:
    """Time ``call()`` under each method (None = the unpatched model), round-robin.

    Every round runs every method once, in the given order; the first ``warmup`` rounds are not
    recorded. Returns one row per method with medians and ranges (ms) and speedups against the
    first method's medians.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    times: Dict[str, Dict[str, List[float]]] = {name: {"e2e": [], "loop": []} for name, _ in methods}
    bar = _progress_bar((warmup + repeats) * len(methods), progress)
    for rnd in range(warmup + repeats):
        for name, cfg in methods:
            if cfg is None:
                api.restore(model)
            else:
                api.accelerate(model, cfg)
            e2e = _timed(call)
            if rnd >= warmup:
                times[name]["e2e"].append(e2e)
                times[name]["loop"].append(e2e - timer.last)
            if bar is not None:
                bar.set_postfix_str(f"round {rnd + 1} {name}: {e2e * 1e3:.0f} ms")
                bar.update(1)
    if bar is not None:
        bar.close()
    api.restore(model)
    base_name = methods[0][0]
    base = {k: statistics.median(v) for k, v in times[base_name].items()}
    rows = []
    for name, _ in methods:
        t = times[name]
        med = {k: statistics.median(v) for k, v in t.items()}
        rows.append(dict(method=name, loop_ms=med["loop"] * 1e3, loop_min_ms=min(t["loop"]) * 1e3,
                         loop_max_ms=max(t["loop"]) * 1e3, e2e_ms=med["e2e"] * 1e3,
                         loop_speedup=base["loop"] / med["loop"], e2e_speedup=base["e2e"] / med["e2e"]))
    return rows


def format_table(title: str, rows: Sequence[Dict[str, float]]) -> str:
    lines = [title, f"{'method':<36} {'loop ms (median, min-max)':>28} {'e2e ms':>9} {'loop x':>7} {'e2e x':>7}"]
    for r in rows:
        rng = f"{r['loop_ms']:.0f} ({r['loop_min_ms']:.0f}-{r['loop_max_ms']:.0f})"
        lines.append(f"{r['method']:<36} {rng:>28} {r['e2e_ms']:>9.0f} {r['loop_speedup']:>6.2f}x {r['e2e_speedup']:>6.2f}x")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# methods as plans on the same engine
METHODS_HELP = ("baseline (the unpatched call), any preset name, cfg-only, lowrank-only, skip-last-N, "
                "uncond-last-N, cond-last-N, fastvar, or a path to a StageVARConfig JSON file")


def _last_n(name: str, prefix: str) -> int:
    try:
        n = int(name[len(prefix):])
        assert n >= 1
    except (ValueError, AssertionError):
        raise ConfigError(f"method {name!r}: write {prefix}N with N >= 1, e.g. {prefix}2") from None
    return n


def fastvar_config(depth: int) -> StageVARConfig:
    """FastVAR-style cached token pruning as a plan: at the last two scales, in the middle blocks
    (from ``round(0.1 * depth)`` to ``round(0.85 * depth)``), keep the 60% / 50% of tokens farthest
    from the token-map mean and fill the others from the previous scale's output, upsampled.
    Both CFG branches run; nothing is skipped (skipping is its own method)."""
    lo, hi = round(0.1 * depth), round(0.85 * depth)

    def per_block(keep: float):
        return [keep if lo <= j < hi else 1.0 for j in range(depth)]

    return StageVARConfig(refine_start=-2, branch="both", rank_ratios={-2: per_block(0.6), -1: per_block(0.5)},
                          unit_blocks=1, projection="sample", selection="mean_distance", name="fastvar")


def resolve_methods(names: Sequence[str], default_preset: str, depth: int) -> List[Method]:
    """Method names -> ``(label, config or None)``; errors name the accepted methods."""
    from .presets import preset, presets

    out: List[Method] = []
    default = preset(default_preset)
    for name in names:
        if name == "baseline":
            out.append(("baseline", None))
        elif name in presets():
            out.append((name, preset(name)))
        elif name == "cfg-only":
            out.append((name, default.replace(rank_ratio=None, rank_ratios={}, rank_table={}, alpha=None, name=name)))
        elif name == "lowrank-only":
            out.append((name, default.replace(branch="both", name=name)))
        elif name.startswith("skip-last-"):
            n = _last_n(name, "skip-last-")
            out.append((name, StageVARConfig(refine_start=None, skip=tuple(range(-n, 0)), name=name)))
        elif name.startswith(("uncond-last-", "cond-last-")):  # one CFG branch on the last N scales, full rank
            branch = name.split("-", 1)[0]
            n = _last_n(name, f"{branch}-last-")
            out.append((name, StageVARConfig(refine_start=-n, branch=branch, name=name)))
        elif name == "fastvar":
            out.append((name, fastvar_config(depth)))
        elif name.endswith(".json"):
            try:
                cfg = StageVARConfig.load(name)
            except FileNotFoundError:
                raise ConfigError(f"method {name!r}: no such config file") from None
            out.append((cfg.name if cfg.name != "custom" else name, cfg))
        else:
            raise ConfigError(f"unknown method {name!r}; methods: {METHODS_HELP}")
    labels = [m[0] for m in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"methods repeat a name: {labels}")
    if not out or out[0][1] is not None:
        out.insert(0, ("baseline", None))  # ratios and fidelity are against the unpatched call
    return out


class _Recorder(Observer):
    """Keeps the sampled ids per scale."""

    def __init__(self):
        self.tokens = {}

    def sampled(self, si, ids):
        self.tokens[si] = ids.detach().cpu()


class _PeakHeap:
    """Peak increase of this process's live heap while the block runs (CPU), sampled every 1 ms.

    Live bytes come from glibc's ``mallinfo2`` (in-use arena plus mmapped blocks), which, unlike
    the resident set, falls when tensors are freed; where it is unavailable, the resident set size
    is sampled instead (``kind`` says which)."""

    def __init__(self):
        import ctypes

        self.kind = "cpu_peak_rss_increase_MiB"
        self._read = self._rss
        try:
            class _MI2(ctypes.Structure):
                _fields_ = [(n, ctypes.c_size_t) for n in
                            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

            libc = ctypes.CDLL("libc.so.6")
            libc.mallinfo2.restype = _MI2
            self._libc = libc
            self._read = self._heap
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

    def __enter__(self):
        import threading

        self.base = self.peak = self._read()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._read())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._read())


def _inspect(model, adapter, cfg: StageVARConfig, call_kwargs: dict, device: torch.device):
    """One observed call under ``cfg``: sampled ids per scale, the image, the report, peak memory."""
    from .engine import Engine

    eng = Engine(adapter, cfg)
    rec = _Recorder()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        out = eng.observe(rec, **call_kwargs)
        torch.cuda.synchronize(device)
        mem = dict(kind="cuda_max_allocated_MiB", value=torch.cuda.max_memory_allocated(device) / 2 ** 20)
    else:
        with _PeakHeap() as m:
            out = eng.observe(rec, **call_kwargs)
        mem = dict(kind=m.kind, value=(m.peak - m.base) / 2 ** 20)
    return rec.tokens, adapter.images_of(out), eng.last_report, mem


def run(model: Any, methods: Sequence[str], call_kwargs: dict, repeats: int = 3, warmup: int = 1,
        out_dir: Optional[str] = None, progress: bool = False, title: str = "") -> dict:
    """Measure ``methods`` on ``model`` side by side and return (and optionally write) a report.

    Args:
        model: a supported model (VAR or Infinity interface), unpatched.
        methods: names, see :data:`METHODS_HELP`; ``baseline`` is added first if missing.
        call_kwargs: the generation call's arguments (same seeds for every method).
        repeats, warmup: timed interleaved rounds, and untimed rounds before them.
        out_dir: where to write ``bench.json``, ``images.png`` and (with matplotlib) the charts.

    Per method: transformer-loop and end-to-end time (median, min-max) and speedups against the
    baseline of the same run; per-scale time and FLOP model from stagevar's report (the baseline's
    from the ``"none"`` preset, which is bit-identical to the unpatched call); peak memory (CUDA
    max allocated, or the CPU process's peak live-heap increase sampled during the call); fidelity to
    the baseline images of the same seed (PSNR, SSIM) and per-scale token agreement.
    """
    from .adapters import adapter_for
    from .calibrate import psnr, ssim
    from .presets import preset

    if api.is_accelerated(model):
        raise ValueError("stagevar.bench.run needs the unpatched model: call stagevar.restore(model) first")
    adapter = adapter_for(model)
    ms = resolve_methods(methods, adapter.default_preset, len(adapter.blocks()))
    obj, attr = adapter.decoder(call_kwargs)
    timer = DecodeTimer(obj, attr)
    device = adapter.device()
    try:
        rows = interleaved(model, lambda: model.autoregressive_infer_cfg(**call_kwargs), ms, repeats, timer,
                           warmup=warmup, progress=progress)
    finally:
        timer.remove()
    import warnings

    results, images = [], []
    base_tokens = base_img = base_flops = None
    for (label, cfg), row in zip(ms, rows):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokens, img, rep, mem = _inspect(model, adapter, cfg or preset("none"), call_kwargs, device)
        images.append((label, img))
        if cfg is None:
            base_tokens, base_img, base_flops = tokens, img, rep.gflops
        agree = {}
        for si, ids in tokens.items():
            ref = base_tokens.get(si)
            agree[si] = None if ref is None or ref.shape != ids.shape else float((ids == ref).float().mean())
        for si in base_tokens:
            agree.setdefault(si, None)  # skipped scales
        results.append(dict(
            row, config=None if cfg is None else cfg.to_dict(), skipping=rep.skipping,
            per_scale=[dict(index=s.index, hw=list(s.hw), mode=s.mode, rows=s.rows, tokens=list(s.tokens),
                            ms=s.time_s * 1e3, gflops=s.gflops) for s in rep.scales],
            gflops=rep.gflops, flop_ratio=base_flops / rep.gflops if rep.gflops else None, memory=mem,
            psnr=float(psnr(img, base_img).mean()), ssim=float(ssim(img, base_img).mean()),
            token_agreement={str(k): v for k, v in sorted(agree.items())}))
    from .cli import machine_name

    report = dict(title=title, device=machine_name(device), repeats=repeats, warmup=warmup,
                  call={k: v for k, v in call_kwargs.items() if isinstance(v, (int, float, str, bool))}, methods=results)
    if out_dir:
        _write(report, out_dir, images)
    return report


def format_report(report: dict) -> str:
    """The terminal table of :func:`run`'s report."""
    lines = [report["title"] or "stagevar bench", f"on {report['device']}, {report['repeats']} interleaved rounds "
             f"after {report['warmup']} warm-up"]
    lines.append(f"{'method':<26} {'loop ms (min-max)':>22} {'e2e ms':>9} {'loop x':>7} {'e2e x':>7} {'FLOP x':>7} "
                 f"{'mem MiB':>8} {'PSNR':>6} {'SSIM':>6} {'tok agr':>8}")
    for m in report["methods"]:
        rng = f"{m['loop_ms']:.0f} ({m['loop_min_ms']:.0f}-{m['loop_max_ms']:.0f})"
        last = next((v for v in reversed(list(m["token_agreement"].values())) if v is not None), None)
        fx = "-" if m["flop_ratio"] is None else f"{m['flop_ratio']:.2f}x"
        lines.append(f"{m['method'] + (' [skip]' if m['skipping'] else ''):<26} {rng:>22} {m['e2e_ms']:>9.0f} "
                     f"{m['loop_speedup']:>6.2f}x {m['e2e_speedup']:>6.2f}x {fx:>7} {m['memory']['value']:>8.1f} "
                     f"{m['psnr']:>6.1f} {m['ssim']:>6.3f} {('-' if last is None else f'{last:.3f}'):>8}")
    lines.append("tok agr: token agreement with the baseline at the last scale run; PSNR 100 = identical; "
                 f"mem: {report['methods'][0]['memory']['kind']}")
    return "\n".join(lines)


def _write(report: dict, out_dir: str, images) -> None:
    import json
    import os

    from .cli import save_grid

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench.json"), "w") as f:
        json.dump(report, f, indent=1)
    save_grid([img for _, img in images], os.path.join(out_dir, "images.png"))
    with open(os.path.join(out_dir, "images.txt"), "w") as f:
        f.write("rows of images.png, top to bottom: " + ", ".join(label for label, _ in images) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ms = report["methods"]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(ms)), 4))
    n_scales = max(len(m["per_scale"]) for m in ms)
    bottom = [0.0] * len(ms)
    cmap = plt.get_cmap("viridis")
    for si in range(n_scales):
        h = [m["per_scale"][si]["ms"] if si < len(m["per_scale"]) else 0.0 for m in ms]
        ax.bar(range(len(ms)), h, bottom=bottom, color=cmap(si / max(1, n_scales - 1)), label=f"scale {si}")
        bottom = [b + x for b, x in zip(bottom, h)]
    ax.set_xticks(range(len(ms)), [m["method"] for m in ms], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ms per call (stagevar report; baseline via 'none')")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "per_scale_time.png"), dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    for m in ms:
        ax.scatter(m["loop_speedup"], min(m["psnr"], 60.0))
        ax.annotate(m["method"], (m["loop_speedup"], min(m["psnr"], 60.0)), fontsize=7)
    ax.set_xlabel("transformer-loop speedup")
    ax.set_ylabel("PSNR to baseline (dB, shown <= 60)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "speed_vs_fidelity.png"), dpi=110)
    plt.close(fig)
