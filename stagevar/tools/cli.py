"""Command line: ``stagevar demo | bench | plan | calibrate | generate`` (also ``python -m stagevar ...``).

It parses and prints; the work lives in the tools (:mod:`.demo`, :mod:`.bench`,
:mod:`.calibrate`, :mod:`.generate` over :mod:`.runner`), what a family's model needs in its
adapter, its presets and the reference-model registry, and nothing in the package imports this
module.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import torch

from .._files import folder_problem
from ..adapters import adapter_for
from ..config import ConfigError
from ..executors import EXECUTIONS, GraphsUnavailableError
from ..presets import compared
from .runner import BASELINE, METHODS_HELP, MODEL_DEFAULT, check_executions, method_config
from .timing import machine_name


def _named_config(arg: str, model, baseline: str, family_default=None):
    """``--config``: any method name ``stagevar bench --methods`` takes but ``baseline`` (a preset,
    ``cfg-only``, ``fastvar``, ``skip-last-N``, ...) or a config file. ``baseline``: why the
    unpatched call is no answer here."""
    cfg = method_config(arg, model, family_default)
    if cfg is BASELINE:
        raise ConfigError(f"--config {arg!r}: {baseline}; name a config ({METHODS_HELP})")
    return cfg


_DEMO_BASELINE = "the unpatched model is always the first row"


def _check_config_names(args) -> None:
    """``--config`` / ``--methods`` refused by name (or as a file) before the model is built: a
    relative name (``cfg-only``) is checked against any family here, against the model's own later."""
    some_family = lambda: "var-d16"  # noqa: E731
    if args.command == "demo":
        for c in args.config or []:
            _named_config(c, None, _DEMO_BASELINE, family_default=some_family)
    elif args.command == "generate" and args.config:
        method_config(args.config, None, some_family)
    elif args.command == "bench":
        for name in args.methods or []:
            method_config(name, None, some_family)


def _cli_model(args, tool: str):
    """``(description, model, generation kwargs without conditions, encode or None)`` for ``--model``,
    built by the registry of reference models (at the shape ``tool`` builds by default)."""
    from ..models import MODEL_BUILDERS, build_reference

    shape = MODEL_BUILDERS[args.model].shape_for(tool, args.shape)
    ref = build_reference(args.model, shape, device=torch.device(args.device), aspect=args.aspect, cfg=args.cfg,
                          checkpoint=args.checkpoint)
    kw = dict(ref.call_kwargs, g_seed=getattr(args, "seed", 0), top_k=args.top_k, top_p=args.top_p)
    return ref.description, ref.model, kw, ref.encode


def _trained(args) -> bool:
    from ..models import MODEL_BUILDERS

    return MODEL_BUILDERS[args.model].checkpoints


def _demo(args) -> int:
    from .demo import demo, demo_configs

    torch.manual_seed(0)
    what, model, kw, encode = _cli_model(args, "demo")
    adapter = adapter_for(model)
    trained = _trained(args)
    args.batch = args.batch or (model.num_classes if trained and not adapter.takes_prompts else 2)
    conditions = adapter.default_conditions(args.batch)
    kw.update(adapter.condition_kwargs(conditions, encode))
    machine = machine_name(args.device)
    names = getattr(model, "class_names", None)
    classes = f" (classes: {', '.join(names)})" if trained and names else ""
    print(f"stagevar demo: {what}{classes}, B={args.batch}, on {machine}")
    configs = demo_configs(model, args.config and [_named_config(c, model, _DEMO_BASELINE) for c in args.config])
    result = demo(model, configs, kw, conditions, repeats=args.repeats, out=args.out, trained=trained,
                  title=f"stagevar demo: {what}, B={args.batch}, seed {args.seed}, on {machine}")
    for row in result.rows:
        print(f"\n[{row.name}]")
        print(row.report)
        print(f"end-to-end median of {args.repeats}: baseline {row.baseline_ms:.0f} ms, accelerated {row.ms:.0f} ms, "
              f"speedup {row.speedup:.2f}x (config {row.name!r})")
        print(f"per-seed PSNR to baseline {row.psnr:.1f} dB, SSIM {row.ssim:.3f}")
        for view, ca in row.consistency.items():
            cb = row.baseline_consistency[view]
            print(f"class consistency, {view} view (independent classifier): baseline {cb:.3f}, accelerated "
                  f"{ca:.3f} ({ca - cb:+.3f}); one sample per class here, see BENCHMARKS.md for the full "
                  f"evaluation")
    if not trained:
        print("(random weights: these differences say nothing about quality)")
    print(f"\nwrote {args.out} with {result.backend} (top row: baseline; then one row per config: "
          f"{', '.join(r.name for r in result.rows)})")
    return 0


def _plan(args) -> int:
    from ..adapters import VARAdapter
    from ..models import VAR_SHAPES
    from ..plan import describe, resolve_plan, unit_layout

    shape = VAR_SHAPES[args.shape]
    cfg = _named_config(args.config or "var-d16", None, "the unpatched call runs every scale in full, it has no plan",
                        family_default=lambda: VARAdapter.preset_for_depth(shape["depth"]))
    units = unit_layout(shape["depth"], cfg.unit_blocks or 1)
    print(describe(resolve_plan(cfg, [(p, p) for p in shape["patch_nums"]], units)))
    return 0


def _bench(args) -> int:
    from .bench import format_report, run
    from .quality import bundled_judges

    check_executions(args.execution, args.device)  # before building or measuring anything
    what, model, kw, encode = _cli_model(args, "bench")
    adapter = adapter_for(model)
    conditions = adapter.default_conditions(args.batch)
    kw.update(adapter.condition_kwargs(conditions, encode))
    judges = bundled_judges(model)  # the trained model's independent classifiers, else none
    carried = getattr(getattr(model, "stagevar_config", None), "name", None)
    methods = args.methods or ["baseline"] + compared(adapter.default_preset, carried)
    title = f"stagevar bench: {what}, B={args.batch}, executors: {', '.join(args.execution)}"
    if not args.quiet:
        print(title, flush=True)
    report = run(model, methods, kw, repeats=args.repeats, warmup=args.warmup, out_dir=args.out,
                 progress=not args.quiet, title=title, executions=args.execution, judges=judges,
                 targets=torch.tensor(conditions) if judges else None)
    print(format_report(report))
    if args.out:
        print(f"wrote {args.out}/bench.json, images.png (one row per method) and, with matplotlib, the charts")
    return 0


def _calibrate(args) -> int:
    from .calibrate import calibrate

    source = args.write_into_source  # checked by main before any work
    what, model, gen, encode = _cli_model(args, "calibrate")
    adapter = adapter_for(model)
    gen.pop("g_seed")
    gen.update(one_branch_sweep=not args.no_sweep, unit_blocks=args.unit_blocks, seeds=args.seeds, encode=encode)
    given, wrong = (args.prompts, args.conditions) if adapter.takes_prompts else (args.conditions, args.prompts)
    if wrong:
        takes = "prompts (--prompts)" if adapter.takes_prompts else "class labels (--conditions)"
        raise ValueError(f"--model {args.model} takes {takes}, not --{'conditions' if adapter.takes_prompts else 'prompts'}")
    default_n = 4 if adapter.takes_prompts else (model.num_classes if _trained(args) else 8)
    conditions = given or adapter.default_conditions(default_n)
    print(f"stagevar calibrate: {what}, {len(conditions)} conditions x {len(args.seeds)} seeds, "
          f"on {machine_name(args.device)}")
    cal = calibrate(model, conditions, **gen)
    print(cal)
    cfg = cal.recommend(alpha=args.alpha, max_rank_ratio=args.max_rank_ratio, branch=args.branch)
    low = sorted(cfg.rank_table)
    print(f"recommended at alpha={args.alpha}: refine_start={cfg.refine_start} (of {len(cal.schedule)} scales), "
          f"branch={cfg.branch!r}, low-rank scales {low or 'none'} (scales above rank ratio "
          f"{args.max_rank_ratio} run full rank)")
    cal.save(args.out)
    print(f"wrote {args.out}")
    if args.config_out:
        cfg.save(args.config_out)
        print(f"wrote {args.config_out}")
    if args.plot:
        cal.plot(args.plot)
        print(f"wrote {args.plot}")
    if args.write_into:
        from ..models.pretrained import write_config_into

        write_config_into(source, cfg, out=args.write_into)
        print(f"wrote {args.write_into} (the calibrated model's checkpoint, carrying the recommended config)")
    return 0


def _generate(args) -> int:
    from .generate import generate, join_ranks, read_prompts

    rank, world, args.device = join_ranks(args.device)
    try:
        what, model, kw, encode = _cli_model(args, "generate")
        kw.pop("g_seed")
        adapter = adapter_for(model)
        if args.classes is not None and adapter.takes_prompts:
            raise ValueError(f"--model {args.model} takes prompts, not class labels: give --prompts or --prompts-file")
        if (args.prompts is not None or args.prompts_file is not None) and not adapter.takes_prompts:
            raise ValueError(f"--model {args.model} takes class labels, not prompts: give --classes")
        metadata = None
        if args.prompts_file is not None:
            items, metadata = read_prompts(args.prompts_file)
        elif args.classes is not None or args.prompts is not None:
            items = list(args.classes if args.classes is not None else args.prompts)
        else:  # every class, or the built-in prompts
            items = adapter.default_conditions(4 if adapter.takes_prompts else model.num_classes)
        result = generate(model, items, args.out, batch=args.batch, seed=args.seed,
                          config=MODEL_DEFAULT if args.config is None else args.config, call_kwargs=kw,
                          per_item=args.per_item, encode=encode, description=what, rank=rank, world=world,
                          execution=args.execution, progress=not args.quiet, layout=args.layout,
                          metadata=metadata if args.layout == "geneval" else None)
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank == 0:
        n = len(items) * args.per_item
        batches = -(-n // args.batch)
        print(f"stagevar generate: {what}: {n} images in {batches} batches of up to {args.batch} "
              f"({len(result.skipped)} already written, {batches - len(result.skipped)} run over {world} rank(s)) "
              f"in {args.out}; manifest {result.manifest}")
    return 0


def _generation_args(p: argparse.ArgumentParser, top_k: int, top_p: float) -> None:
    """The sampling and device options demo, bench and calibrate share."""
    p.add_argument("--cfg", type=float, default=4.0, help="classifier-free guidance scale (default 4.0)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the model runs (default: cuda when available)")
    p.add_argument("--top-k", type=int, default=top_k, help=f"sample from the k likeliest tokens, 0 for all (default {top_k})")
    p.add_argument("--top-p", type=float, default=top_p,
                   help=f"sample from the likeliest tokens holding this probability, 0 for all (default {top_p})")


def _model_args(p: argparse.ArgumentParser, default: str, shape_help: str) -> None:
    """``--model`` (the registry of reference models), ``--shape`` and ``--aspect``."""
    from ..models import ASPECTS, MODEL_BUILDERS

    p.add_argument("--model", default=default, choices=list(MODEL_BUILDERS),
                   help="; ".join(f"{n}: {m.summary}" for n, m in MODEL_BUILDERS.items()) + f" (default {default})")
    p.add_argument("--shape", default=None, choices=sorted({s for m in MODEL_BUILDERS.values() for s in m.shapes}),
                   help=shape_help)
    p.add_argument("--aspect", default="1:1", choices=sorted(ASPECTS), help="Infinity aspect ratio, width:height")
    p.add_argument("--checkpoint", default=None, metavar="NAME_OR_PATH",
                   help="with --model pretrained: a checkpoint written by stagevar.models.save_pretrained (a local "
                        ".safetensors file or folder, or a Hugging Face Hub repo id) instead of the bundled model")


def build_parser() -> argparse.ArgumentParser:
    from ..models import MODEL_BUILDERS, VAR_SHAPES

    ap = argparse.ArgumentParser(prog="stagevar", description="Stage-aware acceleration of VAR image generators")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="generate baseline and accelerated images side by side")
    _model_args(d, "pretrained" if MODEL_BUILDERS["pretrained"].available() else "var",
                "reference shape (default: d16 for var, small for infinity)")
    d.add_argument("--config", nargs="+", default=None,
                   help="configs to compare with the unpatched model: any bench method but baseline (a preset, "
                        "cfg-only, fastvar, skip-last-N, ..., or a JSON config file; default: the family preset; "
                        "for the trained model also its calibrated preset stagevar-tiny-var)")
    d.add_argument("--batch", type=int, default=None, help="default: one per class (pretrained), else 2")
    d.add_argument("--seed", type=int, default=0, help="the generation call's g_seed (default 0)")
    _generation_args(d, top_k=900, top_p=0.95)
    d.add_argument("--repeats", type=int, default=2,
                   help="timed interleaved rounds; the speedups shown are their medians (default 2)")
    d.add_argument("--out", default="stagevar_demo.png", help="the figure's path (default stagevar_demo.png)")
    d.set_defaults(func=_demo)
    p = sub.add_parser("plan", help="print what a config does at each scale of a reference shape")
    p.add_argument("--shape", default="d16", choices=sorted(VAR_SHAPES), help="reference VAR shape (default d16)")
    p.add_argument("--config", default=None, help="a preset, another bench method or a JSON config file "
                                                   "(default var-d16)")
    p.set_defaults(func=_plan)
    b = sub.add_parser("bench", help="measure methods side by side (time, FLOPs, memory, fidelity) in one run")
    _model_args(b, "var", "reference shape (default tiny)")
    b.add_argument("--methods", nargs="+", default=None, help=METHODS_HELP)
    b.add_argument("--execution", nargs="+", default=["eager"], choices=list(EXECUTIONS),
                   help="executors to time every method under (default eager); 'graphs' needs CUDA. Each is "
                        "compared with the unpatched call and with preset 'none' under the same executor")
    b.add_argument("--batch", type=int, default=2, help="images per generation call, B (default 2)")
    b.add_argument("--seed", type=int, default=0, help="the generation calls' g_seed (default 0)")
    _generation_args(b, top_k=0, top_p=0.0)
    b.add_argument("--rounds", "--repeats", dest="repeats", type=int, default=5,
                   help="timed interleaved rounds, after the warm-up (default 5)")
    b.add_argument("--warmup", type=int, default=1,
                   help="untimed calls per method and executor first (graphs: at least 2, the eager call and the "
                        "capture)")
    b.add_argument("--out", default="bench_out", help="folder for bench.json, images and charts ('' for none)")
    b.add_argument("--quiet", action="store_true", help="no progress lines")
    b.set_defaults(func=_bench)
    c = sub.add_parser("calibrate", help="measure stages and ranks of a reference model from its own generations")
    _model_args(c, "var", "reference shape (default: small for var, tiny for infinity)")
    c.add_argument("--conditions", type=int, nargs="+", default=None,
                   help="class labels, for a class-conditional model (default: 0..7, or every class of a trained one)")
    c.add_argument("--prompts", nargs="+", default=None,
                   help="prompts, for a text-to-image model (Infinity, STAR; default: four built-in prompts)")
    c.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="g_seed of each generation measured, every condition at each (default 0)")
    _generation_args(c, top_k=900, top_p=0.95)
    c.add_argument("--unit-blocks", type=int, default=None, help="blocks per low-rank unit (default: the family's)")
    c.add_argument("--alpha", type=float, default=0.96,
                   help="share of the token energy the recommended ranks keep, one of the measured levels "
                        "(default 0.96)")
    c.add_argument("--branch", default="uncond", choices=["uncond", "cond"],
                   help="the CFG branch the recommended config keeps in the refinement stage")
    c.add_argument("--max-rank-ratio", type=float, default=0.3,
                   help="scales whose measured rank ratio exceeds this run one branch at full rank")
    c.add_argument("--no-sweep", action="store_true", help="skip the one-branch-from-scale-k generations")
    c.add_argument("--out", default="calibration.json", help="the calibration's JSON file (default calibration.json)")
    c.add_argument("--config-out", default=None, help="also save the recommended config as JSON")
    c.add_argument("--plot", default=None, help="PNG of the per-scale curves (needs matplotlib)")
    c.add_argument("--write-into", default=None, metavar="CKPT",
                   help="also write the calibrated model's checkpoint to CKPT (.safetensors) with the recommended "
                        "config in its metadata, so load_pretrained(CKPT) carries it and accelerate(model) uses it. "
                        "CKPT is a new path, or a checkpoint with the same weights, whose config is replaced; the "
                        "file is written to a temporary name and renamed, so it is never half-written. Needs a "
                        "model loaded from a checkpoint (--model pretrained)")
    c.set_defaults(func=_calibrate)
    g = sub.add_parser("generate", help="write images for classes or prompts under one config, in resumable batches "
                                        "(under torchrun, spread over the ranks)",
                       description="Write --per-item images per class or prompt into --out, B = --batch at a time. "
                                   "Batch k (samples kB..kB+B-1, each item repeated --per-item times in turn) is "
                                   "seeded with g_seed = seed * 1000003 + k, so the same --batch gives the same files "
                                   "for any number of ranks. --out/manifest.json records the run; running again "
                                   "resumes (written batches are skipped) and a different --batch, --seed, config, "
                                   "model or items is refused. Under torchrun --nproc-per-node N the pending "
                                   "batches are shared over the N ranks.")
    _model_args(g, "pretrained" if MODEL_BUILDERS["pretrained"].available() else "var",
                "reference shape (default: d16 for var, small for infinity and star)")
    items = g.add_mutually_exclusive_group()
    items.add_argument("--classes", type=int, nargs="+", default=None,
                       help="class labels (class-conditional models; default: every class)")
    items.add_argument("--prompts", nargs="+", default=None, help="prompts (text-to-image models; default: four "
                                                                  "built-in prompts)")
    items.add_argument("--prompts-file", default=None,
                       help="prompts, one per line; a .jsonl file: a JSON object with a 'prompt' per line (GenEval)")
    g.add_argument("--per-item", type=int, default=1, help="images per class or prompt (default 1)")
    g.add_argument("--batch", type=int, default=16, help="images per generation call, B (default 16); part of what "
                                                          "an image depends on")
    g.add_argument("--seed", type=int, default=0,
                   help="the run's seed: batch k is drawn with g_seed = seed * 1000003 + k (default 0)")
    g.add_argument("--config", default=None,
                   help=f"{METHODS_HELP} (default: the model's own: the config its checkpoint carries, else its "
                        f"family's preset)")
    g.add_argument("--execution", default="auto", choices=list(EXECUTIONS),
                   help="how accelerated scales are launched (default auto: CUDA graphs where they reproduce the "
                        "eager call exactly, eager otherwise)")
    _generation_args(g, top_k=900, top_p=0.95)
    g.add_argument("--out", default="stagevar_images", help="folder for the PNGs and manifest.json")
    g.add_argument("--layout", default="flat", choices=["flat", "geneval"],
                   help="flat: NNNNN_RRR.png in --out; geneval: NNNNN/metadata.jsonl and NNNNN/samples/RRRR.png per "
                        "item, the folders GenEval's evaluate_images.py reads (with --prompts-file "
                        "evaluation_metadata.jsonl each item's line is its metadata.jsonl)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_generate)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    from ..models import MODEL_BUILDERS

    ap = build_parser()
    args = ap.parse_args(argv)
    if getattr(args, "batch", None) is not None and args.batch < 1:  # 0 is not "the default"
        ap.error("--batch must be at least 1")
    if getattr(args, "checkpoint", None) is not None and not MODEL_BUILDERS[args.model].checkpoints:
        with_ckpt = " or ".join(n for n, m in MODEL_BUILDERS.items() if m.checkpoints)
        ap.error(f"--checkpoint loads trained weights: use it with --model {with_ckpt} (--model {args.model} has "
                 f"random weights)")
    if getattr(args, "checkpoint", None) is not None:
        from ..models.pretrained import checkpoint_file

        try:  # a missing file or unreachable Hub repo is an argument fault: refused before any work
            args.checkpoint_path = checkpoint_file(args.checkpoint)
        except OSError as e:
            ap.error(f"--checkpoint: {e}")
    if args.command in ("demo", "bench", "calibrate", "generate") and args.shape is not None:
        shapes = MODEL_BUILDERS[args.model].shapes
        if not shapes and args.command != "bench":
            with_shapes = " or ".join(n for n, m in MODEL_BUILDERS.items() if m.shapes)
            ap.error(f"--shape applies to the random-weight reference models (--model {with_shapes})")
        if shapes and args.shape not in shapes:
            ap.error(f"--shape {args.shape} is not a {args.model} shape; choose one of {sorted(shapes)}")
    for name, least in (("repeats", 1), ("warmup", 0), ("per_item", 1), ("top_k", 0), ("unit_blocks", 1)):
        value = getattr(args, name, None)
        if value is not None and value < least:
            ap.error(f"--{name.replace('_', '-')} must be at least {least}, got {value}")
    import math

    for name, lo, hi, closed_lo, what in (("top_p", 0.0, 1.0, True, "0 (off) to 1"), ("cfg", 0.0, math.inf, True, "0 or more"),
                                          ("max_rank_ratio", 0.0, 1.0, False, "above 0 and at most 1")):
        value = getattr(args, name, None)
        if value is None:
            continue
        if not math.isfinite(value) or value > hi or value < lo or (value == lo and not closed_lo):
            ap.error(f"--{name.replace('_', '-')} must be {what}, got {value}")
    for name in ("classes", "conditions"):
        bad = [v for v in getattr(args, name, None) or [] if v < 0]
        if bad:
            ap.error(f"--{name} takes class indices (0 or more), got {bad}")
    if args.command == "calibrate":
        from .calibrate import ALPHAS

        if args.alpha not in ALPHAS:
            ap.error(f"--alpha {args.alpha} is not a level calibrate measures; choose one of {list(ALPHAS)}")
    under_torchrun = args.command == "generate" and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    if getattr(args, "device", None) is not None and not under_torchrun:  # join_ranks picks each rank's device
        problem = _device_problem(args.device)
        if problem:
            ap.error(problem)
    problem = _unwritable_outputs(args)
    if problem:
        ap.error(problem)
    if getattr(args, "plot", None):
        from .figures import matplotlib_figure

        if matplotlib_figure() is None:  # found now, not after the calibration has run
            ap.error("--plot needs matplotlib: pip install 'stagevar[plot]', or leave out --plot")
    if args.command == "calibrate":
        from .calibrate import write_into_source

        if args.write_into and not MODEL_BUILDERS[args.model].checkpoints:
            ap.error(f"--write-into stores the config in the checkpoint of the calibrated model, and --model "
                     f"{args.model} has random weights and no checkpoint; use --model pretrained, or save the "
                     f"config alone with --config-out")
        try:  # like every argument fault: refused before any work, exit status 2
            args.write_into_source = write_into_source(args.write_into, getattr(args, "checkpoint_path", None))
        except (ValueError, OSError) as e:
            ap.error(str(e))
    try:
        _check_config_names(args)
        return args.func(args)
    except GraphsUnavailableError as e:  # one line, before anything was measured
        print(e, file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 -- one line for the user; --debug for the traceback
        if args.debug:
            raise
        print(f"stagevar {args.command}: error: {e} (run with --debug for the traceback)", file=sys.stderr)
        return 1


def _device_problem(device: str) -> str:
    """What is wrong with ``--device`` on this machine ('' if nothing)."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        return f"--device {device!r} is not a device; give cpu, cuda or cuda:N"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device {device}: this machine has no usable CUDA device; use --device cpu"
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0..)"
    elif dev.type not in ("cpu", "mps", "xpu"):
        return f"--device {device}: stagevar runs on cpu or cuda (and mps, xpu where torch has them)"
    return ""


def _unwritable_outputs(args) -> str:
    """Check every output path before any work: folders are created, files must be writable."""
    outs = [(getattr(args, k, None), k == "out" and args.command in ("bench", "generate"))
            for k in ("out", "config_out", "plot", "write_into")]
    for path, is_dir in outs:
        if not path:
            continue
        if not is_dir and os.path.isdir(path):
            flag = next(k for k in ("out", "config_out", "plot", "write_into") if getattr(args, k, None) == path)
            return f"--{flag.replace('_', '-')} {path} is a folder; give the path of the file to write"
        folder = path if is_dir else (os.path.dirname(os.path.abspath(path)) or ".")
        problem = folder_problem(folder, "choose another --out", "choose another output path")
        if problem:
            return problem
    return ""


if __name__ == "__main__":
    sys.exit(main())
