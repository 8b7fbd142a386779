"""Command line: ``stagevar demo | bench | plan | calibrate | generate`` (also ``python -m stagevar ...``).

It parses and prints; the measuring lives in the tools (:mod:`stagevar.methods`,
:mod:`stagevar.bench`, :mod:`stagevar.calibrate`), and nothing in the package imports this module.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Dict, List, Optional, Tuple

import torch

from ._files import folder_problem
from .config import ConfigError, StageVARConfig
from .executors import EXECUTIONS, GraphsUnavailableError
from .methods import METHODS_HELP, MODEL_DEFAULT, Arm, check_executions, method_config, run_interleaved
from .presets import preset
from .timing import machine_name


def _load_config(arg: Optional[str], default_preset: str, depth: int, baseline: str) -> Optional[StageVARConfig]:
    """``--config``: any method name ``stagevar bench --methods`` takes (a preset, ``cfg-only``,
    ``fastvar``, ``skip-last-N``, ...) or a config file; None when not given. ``baseline``: why
    the unpatched call is no answer here."""
    if arg is None:
        return None
    cfg = method_config(arg, default_preset, depth)
    if cfg is None:
        raise ConfigError(f"--config {arg!r}: {baseline}; name a config ({METHODS_HELP})")
    return cfg


PROMPTS = ["a red fox in the snow", "a lighthouse on a cliff at dusk", "a bowl of ripe cherries",
           "an astronaut riding a horse"]


def _cli_model(args, default_shapes: Dict[str, str]):
    """``(description, model, generation kwargs without conditions, encode or None)`` for ``--model``,
    built by the registry of reference models; ``default_shapes``: per model, when ``--shape`` is not given."""
    from .models import MODEL_BUILDERS, build_reference

    shape = (args.shape or default_shapes[args.model]) if MODEL_BUILDERS[args.model].shapes else None
    ref = build_reference(args.model, shape, device=torch.device(args.device), aspect=args.aspect, cfg=args.cfg,
                          checkpoint=args.checkpoint)
    kw = dict(ref.call_kwargs, g_seed=getattr(args, "seed", 0), top_k=args.top_k, top_p=args.top_p)
    return ref.description, ref.model, kw, ref.encode


def _default_conditions(model, B: int) -> list:
    """Class labels cycling over the classes, or the built-in prompts cycled."""
    if hasattr(model, "num_classes"):
        return [i % model.num_classes for i in range(B)]
    return [PROMPTS[i % len(PROMPTS)] for i in range(B)]


def _demo_model(args):
    """(description, model, generation kwargs with the conditions, the conditions) for the demo."""
    from .adapters import adapter_for

    what, model, kw, encode = _cli_model(args, {"var": "d16", "infinity": "small", "star": "small"})
    args.batch = args.batch or (model.num_classes if args.model == "pretrained" else 2)
    conditions = _default_conditions(model, args.batch)
    kw.update(adapter_for(model).condition_kwargs(conditions, encode))
    return what, model, kw, conditions


def _demo_configs(args, model) -> List[Optional[StageVARConfig]]:
    """``--config`` values, or the model's default (None: the config it carries, else the family's
    preset) -- for the trained model, the family's preset (the paper's recipe) and then the config
    its checkpoint carries (calibrated for it)."""
    from .adapters import adapter_for

    if args.config:
        ad = adapter_for(model)
        return [_load_config(c, ad.default_preset, len(ad.blocks()), "the unpatched model is always the first row")
                for c in args.config]
    if args.model == "pretrained" and getattr(model, "stagevar_config", None) is not None:
        return [preset(adapter_for(model).default_preset), None]
    return [None]


def _demo(args) -> int:
    from .adapters import adapter_for
    from .figures import condition_labels, image_grid_figure, method_label
    from .report import SKIPPING_LABEL
    from .metrics import psnr, ssim
    from .quality import bundled_judges, consistencies

    torch.manual_seed(0)
    what, model, kw, conditions = _demo_model(args)
    adapter = adapter_for(model)
    machine = machine_name(args.device)
    classes = f" (classes: {', '.join(model.class_names)})" if args.model == "pretrained" else ""
    print(f"stagevar demo: {what}{classes}, B={args.batch}, on {machine}")
    configs = _demo_configs(args, model)
    images: Dict[int, torch.Tensor] = {}
    reports: Dict[int, object] = {}

    def keep(rec, out):  # the last round's images and reports
        images[rec.arm], reports[rec.arm] = adapter.images_of(out).float().cpu(), rec.report

    arms = [Arm("baseline", None)] + [Arm(cfg.name if cfg else "default", cfg or MODEL_DEFAULT) for cfg in configs]
    result = run_interleaved(model, arms, [kw], rounds=args.repeats, warmup=1, on_call=keep)
    names = [reports[i + 1].config_name for i in range(len(configs))]
    base_img, acc_img = images[0], [images[i + 1] for i in range(len(configs))]
    judges = bundled_judges(model)  # semantic (block means) and texture (full image) classifiers
    target = torch.tensor(conditions) if judges else None  # judges exist for class-conditional models only

    b = statistics.median(r.wall_s for r in result.of(0))
    cb = consistencies(judges, base_img, target)
    labels = [method_label("baseline", wall_ms=b * 1e3, consistency=cb)]
    for i, name in enumerate(names):
        print(f"\n[{name}]")
        print(reports[i + 1])
        a = statistics.median(r.wall_s for r in result.of(i + 1))
        print(f"end-to-end median of {args.repeats}: baseline {b * 1e3:.0f} ms, accelerated {a * 1e3:.0f} ms, "
              f"speedup {b / a:.2f}x (config {name!r})")
        p, s = float(psnr(acc_img[i], base_img).mean()), float(ssim(acc_img[i], base_img).mean())
        print(f"per-seed PSNR to baseline {p:.1f} dB, SSIM {s:.3f}")
        ca_views = consistencies(judges, acc_img[i], target)
        labels.append(method_label(name, b / a, p, s, ca_views, cb,
                                   skipping=SKIPPING_LABEL if reports[i + 1].skipping else ""))
        for view, ca in ca_views.items():
            print(f"class consistency, {view} view (independent classifier): baseline {cb[view]:.3f}, accelerated "
                  f"{ca:.3f} ({ca - cb[view]:+.3f}); one sample per class here, see BENCHMARKS.md for the full "
                  f"evaluation")
    random = args.model != "pretrained"
    if random:
        print("(random weights: these differences say nothing about quality)")
    note = (f"Rows: the unpatched model, then one per config, same seeds. Speedup: end-to-end median of "
            f"{args.repeats} call(s) against the unpatched model. PSNR, SSIM: to the baseline image of the same "
            f"seed (mean over the row).")
    if judges:
        note += (" Cons.: the share of the row an independent classifier assigns to the class asked for -- semantic: "
                 "one that sees only 8x8 block means (class, colours, layout); texture: one that sees the full image "
                 "(one image per class: a rough sign; see BENCHMARKS.md for the full evaluation).")
    backend = image_grid_figure(  # the title leaves the class list to the column labels
        [base_img] + acc_img, labels, condition_labels(conditions, getattr(model, "class_names", None)), args.out,
        title=f"stagevar demo: {what}, B={args.batch}, seed {args.seed}, on {machine}",
        note=note + (" Random weights: these differences say nothing about quality." if random else ""))
    print(f"\nwrote {args.out} with {backend} (top row: baseline; then one row per config: {', '.join(names)})")
    return 0


def _plan(args) -> int:
    from .models import VAR_SHAPES
    from .plan import describe

    pn = VAR_SHAPES[args.shape]["patch_nums"]
    depth = VAR_SHAPES[args.shape]["depth"]
    cfg = _load_config(args.config, "var-d16", depth, "the unpatched call runs every scale in full, it has no plan") \
        or preset("var-d16")
    from .plan import resolve_plan

    ub = cfg.unit_blocks or 1
    print(describe(resolve_plan(cfg, [(p, p) for p in pn], num_units=-(-depth // ub))))
    return 0


def _bench(args) -> int:
    from .adapters import adapter_for
    from .bench import format_report, run
    from .quality import bundled_judges

    check_executions(args.execution, args.device)  # before building or measuring anything
    what, model, kw, encode = _cli_model(args, {"var": "tiny", "infinity": "tiny", "star": "tiny"})
    conditions = _default_conditions(model, args.batch)
    kw.update(adapter_for(model).condition_kwargs(conditions, encode))
    judges = bundled_judges(model)  # the trained model's independent classifiers, else none
    methods = args.methods or _bench_methods(args.model, adapter_for(model).default_preset)
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


def _bench_methods(model_name: str, default_preset: str) -> List[str]:
    """The default methods of ``stagevar bench``: the family's preset (the one ``accelerate`` picks for
    this model, e.g. infinity-8b for a patchified Infinity) and its relatives, then the ablations."""
    family = {"infinity": [default_preset, default_preset + "-paper"], "star": ["star-d30", "star-d16"],
              "pretrained": ["var-d16", "stagevar-tiny-var"]}.get(model_name, ["var-d16"])
    return ["baseline"] + family + ["cfg-only", "lowrank-only", "fastvar", "skip-last-2"]


def _calibrate(args) -> int:
    from .calibrate import calibrate

    source = args.write_into_source  # checked by main before any work
    what, model, gen, encode = _cli_model(args, {"var": "small", "infinity": "tiny", "star": "small"})
    gen.pop("g_seed")
    gen.update(one_branch_sweep=not args.no_sweep, unit_blocks=args.unit_blocks, seeds=args.seeds, encode=encode)
    if args.model == "infinity":
        conditions = args.prompts or PROMPTS
    else:
        conditions = args.conditions or _default_conditions(model, model.num_classes if args.model == "pretrained" else 8)
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
        from .models.pretrained import write_config_into

        write_config_into(source, cfg, out=args.write_into)
        print(f"wrote {args.write_into} (the calibrated model's checkpoint, carrying the recommended config)")
    return 0


def _checkpoint_for_write_into(args) -> Optional[str]:
    """The file the calibrated model was loaded from, whose tensors and metadata ``--write-into`` writes
    with the recommended config (None without the flag). An existing ``--write-into`` must hold the same
    tensors: only its config changes.

    Raises:
        ValueError: the model was not loaded from a checkpoint, or ``--write-into`` is a file with other
            weights (it is not overwritten).
    """
    if not args.write_into:
        return None
    from .models import MODEL_BUILDERS
    from .models.pretrained import BUNDLED

    if not MODEL_BUILDERS[args.model].checkpoints:
        raise ValueError(f"--write-into stores the config in the checkpoint of the calibrated model, and --model "
                         f"{args.model} has random weights and no checkpoint; use --model pretrained, or save the "
                         f"config alone with --config-out")
    bundled = BUNDLED["stagevar-tiny-var"]
    source = getattr(args, "checkpoint_path", None) or bundled  # resolved by main
    if os.path.isdir(args.write_into):
        raise ValueError(f"--write-into {args.write_into} is a folder; give the checkpoint file's path (.safetensors)")
    if os.path.exists(args.write_into) and os.path.exists(bundled) and os.path.samefile(args.write_into, bundled):
        raise ValueError(f"--write-into {args.write_into} is the bundled checkpoint installed with stagevar: writing it "
                         f"would change what every run of this installation loads; give a new path")
    if os.path.exists(args.write_into) and not _same_tensors(source, args.write_into):
        raise ValueError(f"--write-into {args.write_into} exists and holds other weights than the calibrated model "
                         f"({source}); it is left as it is. Give a new path, or a copy of that checkpoint")
    return source


def _same_tensors(a: str, b: str) -> bool:
    """Whether two safetensors files hold the same tensors (names, dtypes and values)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(a, framework="pt") as fa, safe_open(b, framework="pt") as fb:
            if set(fa.keys()) != set(fb.keys()):
                return False
            return all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())
    except (SafetensorError, OSError):
        return False


def _generate(args) -> int:
    from .generate import generate

    rank, world = _join_ranks(args)
    try:
        what, model, kw, encode = _cli_model(args, {"var": "d16", "infinity": "small", "star": "small"})
        kw.pop("g_seed")
        items, metadata = _generate_items(args, model)
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


def _join_ranks(args) -> Tuple[int, int]:
    """``(rank, world)``: under torchrun (``WORLD_SIZE`` > 1) the process group is initialised from
    its environment (nccl on CUDA, each rank on the GPU ``LOCAL_RANK``; gloo on a CPU); else ``(0, 1)``."""
    from datetime import timedelta

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    cuda = args.device.startswith("cuda")
    if cuda and args.device != "cuda":
        raise ValueError(f"--device {args.device} under torchrun would put all {world} ranks on one GPU; give "
                         f"--device cuda (each rank takes the GPU of its LOCAL_RANK)")
    if args.device == "cuda":
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if cuda:
        torch.cuda.set_device(torch.device(args.device))
    # a rank waits at the final barrier for the slowest one: one batch of a large model can take minutes
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=6))
    return dist.get_rank(), dist.get_world_size()


def _generate_items(args, model) -> Tuple[list, Optional[List[dict]]]:
    """``(items, metadata)``: ``--classes``, ``--prompts`` or ``--prompts-file`` (default: every class, or
    the built-in prompts); metadata: a ``.jsonl`` file's objects, else None."""
    classes = hasattr(model, "num_classes")
    if args.classes is not None and not classes:
        raise ValueError(f"--model {args.model} takes prompts, not class labels: give --prompts or --prompts-file")
    if (args.prompts is not None or args.prompts_file is not None) and classes:
        raise ValueError(f"--model {args.model} takes class labels, not prompts: give --classes")
    if args.prompts_file is not None:
        return _read_prompts(args.prompts_file)
    if args.classes is not None or args.prompts is not None:
        return list(args.classes if args.classes is not None else args.prompts), None
    return (list(range(model.num_classes)) if classes else list(PROMPTS)), None


def _read_prompts(path: str) -> Tuple[List[str], Optional[List[dict]]]:
    """``(prompts, metadata)``: one prompt per non-empty line (metadata None); a ``.jsonl`` file
    (GenEval's metadata) one JSON object with a ``"prompt"`` per line, each object kept as metadata."""
    import json

    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    if not path.endswith(".jsonl"):
        return lines, None
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
            str(record["prompt"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}: line {i + 1} is not a JSON object with a 'prompt' (a .jsonl prompts file holds "
                             f"one per line; for plain text, one prompt per line, use another extension)") from None
        records.append(record)
    return [str(r["prompt"]) for r in records], records


def _generation_args(p: argparse.ArgumentParser, top_k: int, top_p: float) -> None:
    """The sampling and device options demo, bench and calibrate share."""
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the model runs (default: cuda when available)")
    p.add_argument("--top-k", type=int, default=top_k)
    p.add_argument("--top-p", type=float, default=top_p)


def _model_args(p: argparse.ArgumentParser, default: str, shape_help: str) -> None:
    """``--model`` (the registry of reference models), ``--shape`` and ``--aspect``."""
    from .models import ASPECTS, MODEL_BUILDERS

    p.add_argument("--model", default=default, choices=list(MODEL_BUILDERS),
                   help="; ".join(f"{n}: {m.summary}" for n, m in MODEL_BUILDERS.items()) + f" (default {default})")
    p.add_argument("--shape", default=None, choices=sorted({s for m in MODEL_BUILDERS.values() for s in m.shapes}),
                   help=shape_help)
    p.add_argument("--aspect", default="1:1", choices=sorted(ASPECTS), help="Infinity aspect ratio, width:height")
    p.add_argument("--checkpoint", default=None, metavar="NAME_OR_PATH",
                   help="with --model pretrained: a checkpoint written by stagevar.models.save_pretrained (a local "
                        ".safetensors file or folder, or a Hugging Face Hub repo id) instead of the bundled model")


def build_parser() -> argparse.ArgumentParser:
    from .models import MODEL_BUILDERS, VAR_SHAPES

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
    d.add_argument("--seed", type=int, default=0)
    _generation_args(d, top_k=900, top_p=0.95)
    d.add_argument("--repeats", type=int, default=2)
    d.add_argument("--out", default="stagevar_demo.png")
    d.set_defaults(func=_demo)
    p = sub.add_parser("plan", help="print what a config does at each scale of a reference shape")
    p.add_argument("--shape", default="d16", choices=sorted(VAR_SHAPES))
    p.add_argument("--config", default=None, help="a preset, another bench method or a JSON config file "
                                                   "(default var-d16)")
    p.set_defaults(func=_plan)
    b = sub.add_parser("bench", help="measure methods side by side (time, FLOPs, memory, fidelity) in one run")
    _model_args(b, "var", "reference shape (default tiny)")
    b.add_argument("--methods", nargs="+", default=None, help=METHODS_HELP)
    b.add_argument("--execution", nargs="+", default=["eager"], choices=list(EXECUTIONS),
                   help="executors to time every method under (default eager); 'graphs' needs CUDA. Each is "
                        "compared with the unpatched call and with preset 'none' under the same executor")
    b.add_argument("--batch", type=int, default=2)
    b.add_argument("--seed", type=int, default=0)
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
    c.add_argument("--conditions", type=int, nargs="*", default=None, help="VAR class labels (default: 0..7)")
    c.add_argument("--prompts", nargs="*", default=None, help="Infinity prompts (default: four built-in prompts)")
    c.add_argument("--seeds", type=int, nargs="+", default=[0])
    _generation_args(c, top_k=900, top_p=0.95)
    c.add_argument("--unit-blocks", type=int, default=None)
    c.add_argument("--alpha", type=float, default=0.96)
    c.add_argument("--branch", default="uncond", choices=["uncond", "cond"],
                   help="the CFG branch the recommended config keeps in the refinement stage")
    c.add_argument("--max-rank-ratio", type=float, default=0.3,
                   help="scales whose measured rank ratio exceeds this run one branch at full rank")
    c.add_argument("--no-sweep", action="store_true", help="skip the one-branch-from-scale-k generations")
    c.add_argument("--out", default="calibration.json")
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
    g.add_argument("--seed", type=int, default=0)
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
    from .models import MODEL_BUILDERS

    ap = build_parser()
    args = ap.parse_args(argv)
    if getattr(args, "batch", None) is not None and args.batch < 1:  # 0 is not "the default"
        ap.error("--batch must be at least 1")
    if getattr(args, "checkpoint", None) is not None and not MODEL_BUILDERS[args.model].checkpoints:
        with_ckpt = " or ".join(n for n, m in MODEL_BUILDERS.items() if m.checkpoints)
        ap.error(f"--checkpoint loads trained weights: use it with --model {with_ckpt} (--model {args.model} has "
                 f"random weights)")
    if getattr(args, "checkpoint", None) is not None:
        from .models.pretrained import checkpoint_file

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
    for name, least in (("repeats", 1), ("warmup", 0), ("per_item", 1)):
        if getattr(args, name, least) < least:
            ap.error(f"--{name.replace('_', '-')} must be at least {least}")
    if args.command == "calibrate":
        from .calibrate import ALPHAS

        if args.alpha not in ALPHAS:
            ap.error(f"--alpha {args.alpha} is not a level calibrate measures; choose one of {list(ALPHAS)}")
    problem = _unwritable_outputs(args)
    if problem:
        ap.error(problem)
    if args.command == "calibrate":
        try:  # like every argument fault: refused before any work, exit status 2
            args.write_into_source = _checkpoint_for_write_into(args)
        except (ValueError, OSError) as e:
            ap.error(str(e))
    try:
        return args.func(args)
    except GraphsUnavailableError as e:  # one line, before anything was measured
        print(e, file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 -- one line for the user; --debug for the traceback
        if args.debug:
            raise
        print(f"stagevar {args.command}: error: {e} (run with --debug for the traceback)", file=sys.stderr)
        return 1


def _unwritable_outputs(args) -> str:
    """Check every output path before any work: folders are created, files must be writable."""
    outs = [(getattr(args, k, None), k == "out" and args.command in ("bench", "generate"))
            for k in ("out", "config_out", "plot", "write_into")]
    for path, is_dir in outs:
        if not path:
            continue
        folder = path if is_dir else (os.path.dirname(os.path.abspath(path)) or ".")
        problem = folder_problem(folder, "choose another --out", "choose another output path")
        if problem:
            return problem
    return ""


if __name__ == "__main__":
    sys.exit(main())
