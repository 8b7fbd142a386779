"""Quality and speed of each method on the trained reference VAR (stagevar-tiny-var).

    python examples/quality_reference.py                  # 8 samples per class, 12 classes
    python examples/quality_reference.py --per-class 16 --json quality.json --chart pareto.png
    python examples/quality_reference.py --validate-metrics   # the judges on held-out real crops
    python examples/quality_reference.py --from-json benchmarks/quality_reference_64.json \
        --chart benchmarks/quality_reference_pareto.png    # re-plot saved rows, generate nothing

Loads (or trains, the first time) two independent classifiers on crops of the same photographs:
one at full resolution (texture view) and one that sees only 8x8 block means (semantic view:
class, colours, coarse layout). Then generates the same classes with the same seeds under every
method and prints, per view, class consistency (the fraction of samples the classifier assigns
to the class asked for) and its change against the baseline with a paired standard error
(samples lost / gained), the low-band PSNR (semantic view), the Fréchet distance in the
full-resolution classifier's features and full-band PSNR/SSIM to the baseline sample of the same
seed (texture view), and the wall time of the whole set (methods interleaved batch by batch).

``--chart PATH`` plots speedup against the class-consistency change (+-1 SE), the Pareto front
marked, for the texture view at PATH and the semantic view at PATH's stem + ``_semantic.png``
(needs matplotlib).

``--validate-metrics`` checks the judges before any method is scored: their accuracy on held-out
real crops, clean, blurred and JPEG-compressed. Needs scikit-image to train the classifiers or
validate them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

from stagevar.tools.figures import pareto_chart  # noqa: E402
from stagevar.tools.runner import resolve_methods  # noqa: E402
from stagevar.tools.metrics import lowpass  # noqa: E402
from stagevar.models import load_pretrained  # noqa: E402
from stagevar.models.pretrained import BUNDLED_CLASSIFIERS, BUNDLED_SEMANTIC_CLASSIFIERS  # noqa: E402
from stagevar.tools.quality import evaluate, format_rows, load_classifier, save_classifier, train_classifier  # noqa: E402
from stagevar.tools.timing import machine_name  # noqa: E402

CLF_PATH = BUNDLED_CLASSIFIERS["stagevar-tiny-var"]
# The semantic judge sees 8x8 block means of the 48x48 samples (downsample 6): on held-out real
# crops it keeps its accuracy under blur and JPEG, which the full-resolution judge applied to
# low-passed images does not (BENCHMARKS.md, "validating the judges").
SEMANTIC_PATH = BUNDLED_SEMANTIC_CLASSIFIERS["stagevar-tiny-var"]
SEMANTIC_DOWNSAMPLE = 6
VALIDATION_SEED = 777  # held-out crops: neither classifier trained on this generator's crops


def classifier(var, seed: int, path: str = CLF_PATH, downsample: int = 1):
    """The classifier at ``path``, trained and saved there first if missing: ``(classifier, held-out accuracy or None)``."""
    if os.path.exists(path):
        return load_classifier(path, var.num_classes), None
    import train_reference as T

    g = torch.Generator().manual_seed(seed + 10)
    x, y = T.make_crops(T.load_photos(), 300, g)
    xv, yv = T.make_crops(T.load_photos(), 40, torch.Generator().manual_seed(seed + 11))
    clf = train_classifier((x + 1) / 2, y, var.num_classes, seed=seed, downsample=downsample)
    with torch.no_grad():
        acc = float((clf((xv + 1) / 2).argmax(-1) == yv).float().mean())
    save_classifier(clf, path)
    return clf, acc


def chart(rows, title: str, path: str) -> None:
    """Speedup against the class-consistency change in percentage points (+-1 paired SE bars), one
    chart per view: the texture view at ``path``, the semantic view next to it (``*_semantic.png``)."""
    stem, ext = os.path.splitext(path)
    for view, prefix, out in (("texture / fidelity: full-resolution classifier", "", path),
                              ("semantic / layout: low-band classifier", "semantic_", f"{stem}_semantic{ext or '.png'}")):
        if rows[0].get(prefix + "consistency_change") is None:
            continue
        points = [(r["method"], r["speedup"], 100 * r[prefix + "consistency_change"], 100 * r[prefix + "change_se"])
                  for r in rows]
        if pareto_chart(points, out, xlabel="end-to-end speedup against the unpatched model (x)",
                        ylabel=f"class-consistency change (percentage points)\n{view}", title=title):
            print(f"wrote {out}")
        else:
            print(f"--chart {out}: not written, it needs matplotlib (pip install matplotlib)")


def _pil_round_trip(img: torch.Tensor, edit) -> torch.Tensor:
    """``(N, 3, H, W)`` in [0, 1] -> the same after ``edit(PIL image) -> PIL image`` on each, as 8-bit RGB."""
    import numpy as np
    from PIL import Image

    out = []
    for im in img:
        pil = Image.fromarray((im.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8))
        out.append(torch.from_numpy(np.asarray(edit(pil).convert("RGB")).astype(np.float32) / 255).permute(2, 0, 1))
    return torch.stack(out)


def _jpeg(quality: int):
    def edit(pil):
        import io

        from PIL import Image

        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        return Image.open(buf)

    return edit


def _blur(radius: float):
    from PIL import ImageFilter

    return lambda pil: pil.filter(ImageFilter.GaussianBlur(radius))


def validate_judges(judges, per_class: int = 40, seed: int = VALIDATION_SEED):
    """``{judge: {view: accuracy}}`` on held-out real crops, clean, blurred (Gaussian, radius 1 and
    2 px) and JPEG-compressed (quality 30 and 15). ``judges``: ``{name: classifier}``."""
    import train_reference as T

    x, y = T.make_crops(T.load_photos(), per_class, torch.Generator().manual_seed(seed))
    x = (x + 1) / 2
    views = {"clean": x, "blur r=1": _pil_round_trip(x, _blur(1)), "blur r=2": _pil_round_trip(x, _blur(2)),
             "JPEG q=30": _pil_round_trip(x, _jpeg(30)), "JPEG q=15": _pil_round_trip(x, _jpeg(15))}
    with torch.no_grad():
        return {name: {v: float((clf(img).argmax(-1) == y).float().mean()) for v, img in views.items()}
                for name, clf in judges.items()}


def format_validation(table, n: int, title: str) -> str:
    views = list(next(iter(table.values())))
    lines = [title, f"{'judge (accuracy on ' + str(n) + ' held-out real crops)':<52}" + "".join(f"{v:>11}" for v in views)]
    for name, accs in table.items():
        lines.append(f"{name:<52}" + "".join(f"{accs[v]:>11.3f}" for v in views))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--methods", nargs="+",
                    default=["baseline", "var-d16", "stagevar-tiny-var", "cfg-only", "lowrank-only", "fastvar",
                             "skip-last-1", "skip-last-2", "uncond-last-1", "cond-last-2", "uncond-last-2"])
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--chart", default=None, help="PNG of speedup against the consistency change (needs matplotlib)")
    ap.add_argument("--from-json", default=None,
                    help="rows saved by --json: draw --chart from them instead of generating")
    ap.add_argument("--validate-metrics", action="store_true",
                    help="print the judges' accuracy on held-out real crops (clean, blurred, JPEG) and exit")
    args = ap.parse_args()
    if args.from_json:
        if not args.chart:
            ap.error("--from-json only re-plots: give --chart PATH")
        with open(args.from_json) as f:
            saved = json.load(f)
        chart(saved["rows"], saved["title"], args.chart)
        return
    torch.manual_seed(args.seed)
    var = load_pretrained("stagevar-tiny-var")
    clf, acc = classifier(var, args.seed)
    if acc is not None:
        print(f"classifier trained; held-out accuracy on real crops {acc:.3f}")
    semantic, sem_acc = classifier(var, args.seed, SEMANTIC_PATH, SEMANTIC_DOWNSAMPLE)
    if sem_acc is not None:
        print(f"semantic classifier trained; held-out accuracy on real crops {sem_acc:.3f}")
    if args.validate_metrics:
        judges = {"semantic: low-band classifier (8x8 block means)": semantic,
                  "texture: full-resolution classifier": clf,
                  "full-resolution classifier on lowpass(img, 6)": lambda img: clf(lowpass(img, SEMANTIC_DOWNSAMPLE))}
        table = validate_judges(judges)
        print(format_validation(table, 40 * var.num_classes, f"judges on held-out real crops (seed {VALIDATION_SEED}) "
                                f"on {machine_name()}"))
        return
    methods = resolve_methods(args.methods, var)
    rows = evaluate(var, methods, classifier=clf, semantic_classifier=semantic, per_class=args.per_class,
                    seed=args.seed, cfg=args.cfg, top_k=0, top_p=args.top_p)
    title = (f"stagevar-tiny-var ({var.num_classes} classes x {args.per_class} samples, cfg={args.cfg}, "
             f"top_p={args.top_p}) on {machine_name()}")
    print(format_rows(rows, title))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(title=title, classifier_heldout_accuracy=acc, semantic_classifier_heldout_accuracy=sem_acc,
                           semantic_downsample=SEMANTIC_DOWNSAMPLE, rows=rows), f, indent=1)
    if args.chart:
        chart(rows, title, args.chart)


if __name__ == "__main__":
    main()
