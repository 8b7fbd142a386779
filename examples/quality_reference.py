"""Quality and speed of each method on the trained reference VAR (stagevar-tiny-var).

    python examples/quality_reference.py                  # 8 samples per class, 12 classes
    python examples/quality_reference.py --per-class 16 --json quality.json --chart pareto.png
    python examples/quality_reference.py --from-json benchmarks/quality_reference_64.json \
        --chart benchmarks/quality_reference_pareto.png    # re-plot saved rows, generate nothing

Trains (or loads) an independent classifier on crops of the same photographs, then generates the
same classes with the same seeds under every method and prints class consistency (the fraction
of samples the classifier assigns to the class asked for), its change against the baseline, the
Fréchet distance to the baseline samples in the classifier's feature space, PSNR/SSIM to the
baseline sample of the same seed, and the wall time of the whole set (methods interleaved batch
by batch). The change carries a paired standard error (samples lost / gained against the baseline).
``--chart`` plots speedup against the class-consistency change (+-1 SE), the Pareto front marked
(needs matplotlib). Needs scikit-image to train the classifier the first time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

from stagevar.figures import pareto_chart  # noqa: E402
from stagevar.methods import resolve_methods  # noqa: E402
from stagevar.models import load_pretrained  # noqa: E402
from stagevar.models.pretrained import BUNDLED_CLASSIFIERS  # noqa: E402
from stagevar.quality import evaluate, format_rows, load_classifier, save_classifier, train_classifier  # noqa: E402
from stagevar.timing import machine_name  # noqa: E402

CLF_PATH = BUNDLED_CLASSIFIERS["stagevar-tiny-var"]


def classifier(var, seed: int):
    if os.path.exists(CLF_PATH):
        return load_classifier(CLF_PATH, var.num_classes), None
    import train_reference as T

    g = torch.Generator().manual_seed(seed + 10)
    x, y = T.make_crops(T.load_photos(), 300, g)
    xv, yv = T.make_crops(T.load_photos(), 40, torch.Generator().manual_seed(seed + 11))
    clf = train_classifier((x + 1) / 2, y, var.num_classes, seed=seed)
    with torch.no_grad():
        acc = float((clf((xv + 1) / 2).argmax(-1) == yv).float().mean())
    save_classifier(clf, CLF_PATH)
    return clf, acc


def chart(rows, title: str, path: str) -> None:
    """Speedup against the class-consistency change in percentage points, +-1 paired SE bars."""
    points = [(r["method"], r["speedup"], 100 * r["consistency_change"], 100 * r["change_se"]) for r in rows]
    if pareto_chart(points, path, xlabel="end-to-end speedup against the unpatched model (x)",
                    ylabel="class-consistency change against the baseline (percentage points)", title=title):
        print(f"wrote {path}")
    else:
        print(f"--chart {path}: not written, it needs matplotlib (pip install matplotlib)")


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
    methods = resolve_methods(args.methods, "var-d16", len(var.blocks))
    rows = evaluate(var, clf, methods, per_class=args.per_class, seed=args.seed, cfg=args.cfg, top_k=0, top_p=args.top_p)
    title = (f"stagevar-tiny-var ({var.num_classes} classes x {args.per_class} samples, cfg={args.cfg}, "
             f"top_p={args.top_p}) on {machine_name()}")
    print(format_rows(rows, title))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(title=title, classifier_heldout_accuracy=acc, rows=rows), f, indent=1)
    if args.chart:
        chart(rows, title, args.chart)


if __name__ == "__main__":
    main()
