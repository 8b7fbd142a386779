"""Side-by-side measurement: the unpatched call and accelerated methods, interleaved in one run.

:func:`interleaved` times methods under executors (eager, CUDA graphs) on the runner of
:mod:`.runner`; :func:`run` adds, per method, the FLOP model, peak memory and fidelity
to the unpatched call (PSNR, SSIM, token agreement per scale), and writes the figures.
"""
from __future__ import annotations

import statistics
import warnings
from typing import Any, Dict, List, Optional, Sequence

import torch

from .. import _args, api
from .._files import folder_problem
from ..adapters import adapter_for
from ..engine import Engine, Observer
from ..executors import EXECUTIONS, outputs_equal
from .figures import image_grid_figure, matplotlib_figure, method_label, pareto_chart
from .runner import BASELINE, METHODS_HELP, Method, arms_for, resolve_methods, run_interleaved
from .metrics import psnr, ssim, token_agreement
from ..presets import preset
from .quality import consistencies
from ..report import SKIPPING_LABEL
from .timing import PeakMemory, machine_name

__all__ = ["interleaved", "format_timing", "run", "format_report", "METHODS_HELP"]


def _clone(out: Any) -> Any:
    """A copy of a generation output that later calls cannot overwrite (graph pools are reused)."""
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    if isinstance(out, (list, tuple)):
        return type(out)(_clone(o) for o in out)
    return out


def _med(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    return None if num is None or not den else num / den


def interleaved(model: Any, call_kwargs: Any, methods: Sequence[Method], repeats: int, warmup: int = 1,
                executions: Sequence[str] = ("eager",), progress: bool = False,
                peak_memory: bool = True) -> List[Dict[str, Any]]:
    """Time the generation call under each method and executor, interleaved round by round.

    Args:
        model: a supported model, unpatched (unpatched again on return or error).
        call_kwargs: the generation call's arguments; the same (seed included) for every call. A
            list of them (prompts of several lengths, say): every round runs each under every arm,
            the warm-up too, and the rows' medians are over all of them.
        methods: ``[(label, config)]``; :data:`~.runner.BASELINE` is the unpatched call, run once, eagerly (added
            first if missing). The ``none`` preset is added if missing: each executor's rows are
            also compared with ``none`` under that executor.
        repeats: timed rounds (every arm once per round, in order).
        warmup: untimed calls per arm first; at least two where graphs may run (the first call of
            a shape runs eager, the second captures), so that timed calls replay.
        executions: ``"eager"``, ``"graphs"``, ``"auto"`` (see :func:`stagevar.accelerate`).
        peak_memory: one more untimed call per arm under :class:`~.timing.PeakMemory` (CUDA: peak
            allocated over the call; CPU: the peak increase of the live heap during the call).

    Returns:
        One row per method x executor: medians and ranges in ms of the wall time (``e2e_*``) and
        the loop (wall minus decode), host time, device time, host/wall, capture ms, pool MiB, which
        executor ran (and its notes), ``exact`` (graphs: ``torch.equal`` to the same method's eager
        output for the same seed), and ratios against the unpatched call (``e2e_speedup``,
        ``loop_speedup``, ``device_speedup``) and against ``none`` under the same executor
        (``none_wall_ratio``, ``none_device_ratio``); ``images_per_s`` (B over the median wall
        time) and ``peak_mib`` / ``peak_kind``.
    """
    where = "stagevar.bench.interleaved"
    batches = list(call_kwargs) if isinstance(call_kwargs, (list, tuple)) else [call_kwargs]
    if not batches or not all(isinstance(b, dict) for b in batches):
        raise ValueError(f"{where}: call_kwargs must be a dict of the generation call's arguments, or a non-empty "
                         f"list of them")
    repeats, warmup = _args.whole(where, "repeats", repeats), _args.whole(where, "warmup", warmup, minimum=0)
    executions = _args.names(where, "executions", executions, f"executions ({', '.join(EXECUTIONS)})")
    methods = list(methods)
    if not any(config is BASELINE for _, config in methods):
        methods.insert(0, ("baseline", BASELINE))
    none = preset("none")
    if not any(config == none for _, config in methods):
        at = next(i for i, (_, config) in enumerate(methods) if config is BASELINE) + 1
        methods.insert(at, ("none", none))
    arms = arms_for(methods, executions)
    last: Dict[int, Any] = {}

    def keep(rec, out):
        if rec.batch == 0:
            last[rec.arm] = _clone(out)

    result = run_interleaved(model, arms, batches, rounds=repeats, warmup=warmup, on_call=keep,
                             progress=progress, desc="stagevar bench", peak_memory=peak_memory,
                             warm_every_batch=len(batches) > 1)
    exact = _exactness(model, arms, last, batches[0])
    images = next((r.report.batch_size for r in result.records if r.report is not None), None)
    rows = []
    for i, arm in enumerate(arms):
        recs = result.of(i)
        wall = [r.wall_s for r in recs]
        loop = [r.loop_s for r in recs]
        reps = [r.report for r in recs if r.report is not None]
        host = [r.report.host_s if r.report is not None else r.host_s for r in recs]
        device = [r.report.total_s if r.report is not None else r.wall_s for r in recs]
        ran = sorted({r.executor for r in reps}) or ["eager"]
        notes = sorted({r.note for r in reps if r.note})
        graphs = [r for r in reps if r.executor == "graphs"]
        rows.append(dict(
            method=arm.label, execution=arm.execution, ran=ran, notes=notes,
            skipping=any(r.skipping for r in reps),
            fell_back=arm.execution == "graphs" and len(graphs) < len(recs),
            calls=len(recs), eager_calls=len(recs) - len(graphs),
            e2e_ms=_med(wall) * 1e3, e2e_min_ms=min(wall) * 1e3, e2e_max_ms=max(wall) * 1e3,
            loop_ms=_med(loop) * 1e3, loop_min_ms=min(loop) * 1e3, loop_max_ms=max(loop) * 1e3,
            host_ms=_med(host) * 1e3, device_ms=_med(device) * 1e3, host_wall=_med(host) / _med(wall),
            capture_ms=max(r.capture_s for r in graphs) * 1e3 if graphs else None,
            pool_mib=max(r.pool_bytes for r in graphs) / 2 ** 20 if graphs else None,
            exact=exact.get(i), images_per_s=images / _med(wall) if images else None,
            peak_kind=result.peaks[i][0] if i in result.peaks else None,
            peak_mib=result.peaks[i][1] if i in result.peaks else None))
    base = next(r for r, a in zip(rows, arms) if a.config is BASELINE)
    nones = {a.execution: r for r, a in zip(rows, arms) if a.config == none}
    for row, arm in zip(rows, arms):
        ref = nones.get(arm.execution, nones.get("eager"))
        row.update(e2e_speedup=base["e2e_ms"] / row["e2e_ms"], loop_speedup=base["loop_ms"] / row["loop_ms"],
                   device_speedup=base["device_ms"] / row["device_ms"],
                   none_wall_ratio=_ratio(ref and ref["e2e_ms"], row["e2e_ms"]),
                   none_device_ratio=_ratio(ref and ref["device_ms"], row["device_ms"]))
    return rows


def _exactness(model: Any, arms: Sequence[Any], last: Dict[int, Any], call_kwargs: dict) -> Dict[int, bool]:
    """Per non-eager arm: is its last output bit-equal to the same method's eager output?"""
    out: Dict[int, bool] = {}
    eager = {a.label: i for i, a in enumerate(arms) if a.execution == "eager"}
    adapter = adapter_for(model)
    for i, arm in enumerate(arms):
        if arm.execution == "eager" or i not in last:
            continue
        if arm.label in eager and eager[arm.label] in last:
            ref = last[eager[arm.label]]
        else:
            with api.accelerated(model, arm.given, execution="eager"), torch.no_grad():
                ref = getattr(model, adapter.entry_point)(**call_kwargs)
        out[i] = outputs_equal(last[i], ref)
    return out


_PEAK_KINDS = {"cuda_max_allocated_MiB": "CUDA peak allocated over the call (graph pools included)",
               "cpu_peak_heap_increase_MiB": "CPU peak increase of the live heap during the call (tensors and all)",
               "cpu_peak_rss_increase_MiB": "CPU peak increase of the resident set during the call"}
_SKIP_MARK = " " + SKIPPING_LABEL  # some scales are not computed at all (as the report's header says)


def format_timing(title: str, rows: Sequence[Dict[str, Any]]) -> str:
    """The per method x executor timing table of :func:`interleaved`'s rows."""
    def ms(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:.1f}" if v < 100 else f"{v:.0f}"

    def x(*vs: Optional[float]) -> str:
        return "|".join("-" if v is None else f"{v:.2f}x" for v in vs)

    labels = [r["method"] + (_SKIP_MARK if r.get("skipping") else "") for r in rows]
    w = max([30] + [len(label) for label in labels])
    lines = [title, f"{'method':<{w}} {'exec':<6} {'wall ms (min-max)':>22} {'loop ms':>8} {'host ms':>8} "
                    f"{'dev ms':>8} {'host/wall':>9} {'capt ms':>8} {'pool MiB':>8} {'peak MiB':>8} {'img/s':>7} "
                    f"{'exact':>5}  {'vs baseline wall|dev|loop':>25}  {'vs none wall|dev':>16}"]
    for r, label in zip(rows, labels):
        rng = f"{ms(r['e2e_ms'])} ({ms(r['e2e_min_ms'])}-{ms(r['e2e_max_ms'])})"
        exact = "-" if r["exact"] is None else "yes" if r["exact"] else "NO"
        pool = "-" if r["pool_mib"] is None else f"{r['pool_mib']:.1f}"
        peak = "-" if r.get("peak_mib") is None else f"{r['peak_mib']:.0f}"
        ips = "-" if r.get("images_per_s") is None else f"{r['images_per_s']:.3g}"
        lines.append(f"{label:<{w}} {r['execution']:<6} {rng:>22} {ms(r['loop_ms']):>8} "
                     f"{ms(r['host_ms']):>8} {ms(r['device_ms']):>8} {r['host_wall']:>9.2f} {ms(r['capture_ms']):>8} "
                     f"{pool:>8} {peak:>8} {ips:>7} {exact:>5}  "
                     f"{x(r['e2e_speedup'], r['device_speedup'], r['loop_speedup']):>25}  "
                     f"{x(r['none_wall_ratio'], r['none_device_ratio']):>16}")
    if any(r.get("skipping") for r in rows):
        lines.append(f"{SKIPPING_LABEL}: some scales are not computed at all (the image is decoded from the codes "
                     "summed before them)")
    lines.append("wall: to the end of the call's device work (CUDA events around it on a GPU, the clock on a CPU); "
                 "loop: wall minus decode; host: call entry to return, nothing synchronised inside; dev: the "
                 "report's per-scale times plus decode (unpatched call: its wall time); ratios: medians against "
                 "the unpatched call and against 'none' under the same executor; exact: torch.equal to the same "
                 "method's eager output, same seed; img/s: images over the median wall time")
    kinds = sorted({r["peak_kind"] for r in rows if r.get("peak_kind")})
    if kinds:
        lines.append("peak MiB: one more call per row, untimed: " + "; ".join(_PEAK_KINDS.get(k, k) for k in kinds))
    for r in rows:
        if r["execution"] != "eager" and (r["fell_back"] or r["ran"] != ["graphs"]):
            lines.append(f"{r['method']} [{r['execution']}]: ran eager in {r['eager_calls']} of {r['calls']} timed "
                         f"calls: {'; '.join(r['notes']) or 'no note'}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
class _Recorder(Observer):
    """Keeps the sampled ids per scale."""

    def __init__(self):
        self.tokens: Dict[int, torch.Tensor] = {}

    def sampled(self, si, ids):
        self.tokens[si] = ids.detach().cpu()


def _inspect(adapter: Any, config, call_kwargs: dict, device: torch.device):
    """One observed (eager) call under ``config``: sampled ids per scale, the image, the report, peak memory."""
    eng = Engine(adapter, config)
    rec = _Recorder()
    with PeakMemory(device) as mem:
        out = eng.observe(rec, **call_kwargs)
    return rec.tokens, adapter.images_of(out), eng.last_report, dict(kind=mem.kind, value=mem.mib)


def run(model: Any, methods: Sequence[str], call_kwargs: dict, repeats: int = 5, warmup: int = 1,
        out_dir: Optional[str] = None, progress: bool = False, title: str = "",
        executions: Sequence[str] = ("eager",), judges: Optional[Dict[str, Any]] = None,
        targets: Optional[torch.Tensor] = None) -> dict:
    """Measure ``methods`` on ``model`` side by side and return (and optionally write) a report.

    Args:
        model: a supported model (VAR or Infinity interface), unpatched.
        methods: names, see :data:`METHODS_HELP`; ``baseline`` is added first if missing.
        call_kwargs: the generation call's arguments (same seeds for every method).
        repeats, warmup: timed interleaved rounds, and untimed calls per arm before them.
        out_dir: where to write ``bench.json``, ``images.png`` and (with matplotlib) the charts.
        executions: the executors every method is timed under (see :func:`interleaved`).
        judges, targets: ``{view: classifier}`` (e.g. :func:`stagevar.quality.bundled_judges`) and the
            class asked for per image ``(B,)``: each method's class consistency per view, and its
            change against the baseline (B images: a rough sign, not an evaluation).

    ``report["timing"]``: :func:`interleaved`'s rows (every method x executor, and ``none``).
    ``report["methods"]``, per method asked for: loop and end-to-end time (median, min-max) and
    speedups against the baseline of the same run (under the first executor given); per-scale
    time and FLOP model from stagevar's report (the baseline's from the ``"none"`` preset, which is
    bit-identical to the unpatched call); peak memory (CUDA max allocated, or the CPU process's
    peak live-heap increase); fidelity to the baseline images of the same seed (PSNR, SSIM) and
    per-scale token agreement. The model is unpatched on return and on error.
    """
    where = "stagevar.bench.run"
    methods = _args.names(where, "methods", methods, "method names")
    if not isinstance(call_kwargs, dict):
        raise ValueError(f"{where}: call_kwargs must be a dict of the generation call's arguments, got "
                         f"{type(call_kwargs).__name__}")
    repeats, warmup = _args.whole(where, "repeats", repeats), _args.whole(where, "warmup", warmup, minimum=0)
    executions = _args.names(where, "executions", executions, f"executions ({', '.join(EXECUTIONS)})")
    _args.flag(where, "progress", progress)
    _args.text(where, "title", title)
    _args.text(where, "out_dir", out_dir)
    if judges is not None and not isinstance(judges, dict):
        raise ValueError(f"{where}: judges must be a dict {{view: classifier}} or None, got {type(judges).__name__}")
    if judges and targets is None:
        raise ValueError(f"{where}: judges need targets, the class asked for per image (a (B,) tensor)")
    if api.is_accelerated(model):
        raise ValueError("stagevar.bench.run needs the unpatched model: call stagevar.restore(model) first")
    adapter = adapter_for(model)
    ms = resolve_methods(methods, model)
    if out_dir:
        problem = folder_problem(out_dir, "choose another out_dir", "choose another out_dir")
        if problem:
            raise ValueError(f"{where}: {problem}")
    device = adapter.device()
    timing = interleaved(model, call_kwargs, ms, repeats, warmup=warmup, executions=executions, progress=progress)
    first = list(dict.fromkeys(executions))[0]
    by_label = {}
    for row in timing:
        if row["execution"] == first or row["method"] not in by_label:
            by_label[row["method"]] = row
    results, images = [], []
    base_tokens = base_img = base_flops = None
    for label, config in ms:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokens, img, rep, mem = _inspect(adapter, preset("none") if config is BASELINE else config, call_kwargs, device)
        images.append((label, img))
        if config is BASELINE:
            base_tokens, base_img, base_flops = tokens, img, rep.gflops
        t = by_label[label]
        results.append(dict(
            method=label, execution=t["execution"],
            **{k: t[k] for k in ("loop_ms", "loop_min_ms", "loop_max_ms", "e2e_ms", "loop_speedup", "e2e_speedup",
                                 "images_per_s")},
            config=None if config is BASELINE else config.to_dict(), skipping=rep.skipping,
            per_scale=rep.to_dict()["scales"],  # the report's own serialisation (time_s, like every report)
            gflops=rep.gflops, flop_ratio=base_flops / rep.gflops if rep.gflops else None, memory=mem,
            psnr=float(psnr(img, base_img).mean()), ssim=float(ssim(img, base_img).mean()),
            token_agreement={str(k): v for k, v in token_agreement(tokens, base_tokens).items()},
            consistency=consistencies(judges or {}, img, targets)))
    for r in results:
        r["consistency_change"] = {v: c - results[0]["consistency"][v] for v, c in r["consistency"].items()}
    report = dict(title=title, device=machine_name(device), repeats=repeats, warmup=warmup,
                  executions=list(dict.fromkeys(executions)),
                  call={k: v for k, v in call_kwargs.items() if isinstance(v, (int, float, str, bool))},
                  methods=results, timing=timing)
    if out_dir:
        _write(report, out_dir, images)
    return report


def format_report(report: dict) -> str:
    """The terminal tables of :func:`run`'s report: per method, then per method x executor."""
    ex = report["methods"][0]["execution"] if report["methods"] else "eager"
    lines = [report["title"] or "stagevar bench", f"on {report['device']}, {report['repeats']} interleaved rounds "
             f"after {report['warmup']} warm-up call(s) per arm; loop/e2e times under the {ex} executor"]
    labels = [m["method"] + (_SKIP_MARK if m["skipping"] else "") for m in report["methods"]]
    w = max([26] + [len(label) for label in labels])
    views = list(report["methods"][0]["consistency"]) if report["methods"] else []
    lines.append(f"{'method':<{w}} {'loop ms (min-max)':>22} {'e2e ms':>9} {'img/s':>7} {'loop x':>7} {'e2e x':>7} {'FLOP x':>7} "
                 f"{'mem MiB':>8} {'PSNR':>6} {'SSIM':>6} {'tok agr':>8}" + "".join(f" {v[:8] + ' cons.':>20}" for v in views))
    for m, label in zip(report["methods"], labels):
        rng = f"{m['loop_ms']:.0f} ({m['loop_min_ms']:.0f}-{m['loop_max_ms']:.0f})"
        last = next((v for v in reversed(list(m["token_agreement"].values())) if v is not None), None)
        fx = "-" if m["flop_ratio"] is None else f"{m['flop_ratio']:.2f}x"
        ips = "-" if m.get("images_per_s") is None else f"{m['images_per_s']:.3g}"
        lines.append(f"{label:<{w}} {rng:>22} {m['e2e_ms']:>9.0f} {ips:>7} "
                     f"{m['loop_speedup']:>6.2f}x {m['e2e_speedup']:>6.2f}x {fx:>7} {m['memory']['value']:>8.1f} "
                     f"{m['psnr']:>6.1f} {m['ssim']:>6.3f} {('-' if last is None else f'{last:.3f}'):>8}"
                     + "".join(f" {m['consistency'][v]:>11.3f} ({m['consistency_change'][v]:+.3f})" for v in views))
    lines.append("tok agr: token agreement with the baseline at the last scale run; PSNR 100 = identical; "
                 f"mem: {report['methods'][0]['memory']['kind']}")
    if views:
        lines.append("cons.: the share of the batch an independent classifier assigns to the class asked for "
                     "(semantic: it sees only block means -- class, colours, layout; texture: the full image), and "
                     "its change against the baseline; one batch: a rough sign, see BENCHMARKS.md")
    if report.get("timing"):
        lines.append("")
        lines.append(format_timing(f"per method x executor ({', '.join(report['executions'])})", report["timing"]))
    return "\n".join(lines)


def _write(report: dict, out_dir: str, images) -> None:
    import json
    import os

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench.json"), "w") as f:
        json.dump(report, f, indent=1)
    base = report["methods"][0]  # the unpatched call: methods and images are in the same order

    def row_label(m: dict) -> str:
        if m["config"] is None:
            return method_label(m["method"], wall_ms=m["e2e_ms"], consistency=m["consistency"])
        return method_label(m["method"], m["e2e_speedup"], m["psnr"], m["ssim"], m["consistency"],
                            base["consistency"], skipping=SKIPPING_LABEL if m["skipping"] else "")

    imgs = [img for _, img in images]
    image_grid_figure(imgs, [row_label(m) for m in report["methods"]],
                      [f"sample {i}" for i in range(imgs[0].shape[0])], os.path.join(out_dir, "images.png"),
                      title=report["title"] or "stagevar bench",
                      note="Rows: the unpatched call, then one per method, the same seed. Speedup: end to end against "
                           "the unpatched call; PSNR, SSIM: to the unpatched image of the same seed"
                           + ("; cons.: the share an independent classifier assigns to the class asked for, per "
                              "view (a rough sign on this batch)." if base["consistency"] else "."))
    with open(os.path.join(out_dir, "images.txt"), "w") as f:
        f.write("rows of images.png, top to bottom: " + ", ".join(label for label, _ in images) + "\n")
    Figure = matplotlib_figure()  # no pyplot: the user's backend and figures untouched
    if Figure is None:
        return
    from matplotlib import colormaps

    ms = report["methods"]
    fig = Figure(figsize=(max(6, 1.2 * len(ms)), 4))
    ax = fig.subplots()
    n_scales = max(len(m["per_scale"]) for m in ms)
    bottom = [0.0] * len(ms)
    cmap = colormaps["viridis"]
    for si in range(n_scales):
        h = [m["per_scale"][si]["time_s"] * 1e3 if si < len(m["per_scale"]) else 0.0 for m in ms]
        ax.bar(range(len(ms)), h, bottom=bottom, color=cmap(si / max(1, n_scales - 1)), label=f"scale {si}")
        bottom = [b + x for b, x in zip(bottom, h)]
    ax.set_xticks(range(len(ms)), [m["method"] for m in ms], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ms per call (stagevar report; baseline via 'none')")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "per_scale_time.png"), dpi=110)
    # the baseline (PSNR 100: identical to itself) is the dotted line at 1x, not a point that squashes the rest
    others = [m for m in ms if m["psnr"] < 100.0]
    for name, speedup, xlabel in (("speed_vs_fidelity.png", "loop_speedup", "transformer-loop speedup (x)"),
                                  ("pareto.png", "e2e_speedup", "end-to-end speedup (x)")) if others else ():
        pareto_chart([(m["method"], m[speedup], m["psnr"]) for m in others], os.path.join(out_dir, name),
                     xlabel=xlabel + "; dotted: the baseline",
                     ylabel="PSNR to the baseline image of the same seed (dB)",
                     title=f"{report['title']} on {report['device']}")
