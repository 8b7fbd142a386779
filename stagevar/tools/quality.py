"""Quality of accelerated samples against the baseline's, for any model family.

Every method generates the same conditions with the same seeds, and each sample is compared with
the baseline sample of the same seed, in two views:

- **semantic / layout**: does the image keep its class, colours and coarse layout? A classifier
  that sees only the low band (:class:`CropClassifier` with ``downsample`` > 1), and the PSNR of
  the low band (:func:`stagevar.metrics.lowfreq_psnr`);
- **texture / fidelity**: a classifier at full resolution, the Fréchet distance in its
  penultimate features (or in a ``feature_fn``'s), and full-band PSNR / SSIM.

For the trained reference VAR the classifiers are trained on crops of the same photographs (the
analogue of GenEval's object check): class consistency is the fraction of samples of class ``c``
judged ``c``. Its change against the baseline is a paired difference: the standard error comes
from the samples that flipped (correct under the baseline and wrong under the method, or the
reverse), as in McNemar's test. PSNR-type figures carry the standard error over samples.
"""
from __future__ import annotations

import numbers
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _args
from ..adapters import adapter_for
from .runner import BASELINE, Arm, Method, run_interleaved
from .metrics import (downsample, feature_distance, frechet_distance, lowfreq_psnr, mean_se, paired_change_stats, psnr,
                      ssim)


class CropClassifier(nn.Module):
    """A small CNN: ``(B, 3, H, W)`` images in [0, 1] -> class logits; ``features`` gives the penultimate layer.

    ``downsample`` > 1 makes it a low-band classifier: it sees only the image block-averaged by
    that factor (:func:`stagevar.metrics.downsample`), i.e. colours and coarse layout.
    """

    def __init__(self, num_classes: int, width: int = 32, downsample: int = 1):
        super().__init__()
        w = width
        self.downsample = downsample
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(4 * w, 4 * w), nn.ReLU())
        self.fc = nn.Linear(4 * w, num_classes)

    def features(self, img: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 4 * width)``."""
        return self.body(downsample(img, self.downsample) * 2 - 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(img))


def train_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int = 1500, seed: int = 0,
                     batch: int = 64, downsample: int = 1) -> CropClassifier:
    """Train :class:`CropClassifier` on images ``x`` (``(N, 3, H, W)`` in [0, 1]) with labels ``y``.

    Light augmentation (flips, small brightness jitter, 1-2 px shifts) keeps it from keying on
    exact pixels. ``downsample``: see :class:`CropClassifier`.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = CropClassifier(num_classes, downsample=downsample)
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3, weight_decay=1e-4)
    clf.train()
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        img = x[idx]
        if torch.rand(1, generator=g).item() < 0.5:
            img = img.flip(-1)
        img = (img * (0.85 + 0.3 * torch.rand(batch, 1, 1, 1, generator=g))).clamp(0, 1)
        dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
        img = torch.roll(img, shifts=(dy, dx), dims=(2, 3))
        loss = F.cross_entropy(clf(img), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    clf.eval()
    return clf


def _change(prefix: str, base_ok: Optional[torch.Tensor], ok: Optional[torch.Tensor]) -> Dict:
    """The paired change of a correct fraction under ``prefix``-ed keys (None values without a judge)."""
    keys = ("consistency", "consistency_change", "change_se", "lost", "gained")
    if ok is None:
        return {prefix + k: None for k in keys}
    stats = paired_change_stats(base_ok, ok)
    frac, base = float(ok.float().mean()), float(base_ok.float().mean())
    values = (frac, frac - base, stats["change_se"], stats["lost"], stats["gained"])
    return {prefix + k: v for k, v in zip(keys, values)}


def _with_se(name: str, values: torch.Tensor) -> Dict:
    mean, se = mean_se(values)
    return {name: mean, name + "_se": se}


def evaluate(model, methods: Sequence[Method], conditions: Optional[Sequence] = None, *,
             classifier: Optional[CropClassifier] = None, semantic_classifier: Optional[CropClassifier] = None,
             feature_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, targets: Optional[Sequence[int]] = None,
             encode: Optional[Callable] = None, per_class: int = 8, seed: int = 0, batch: int = 16,
             lowpass_factor: Optional[int] = None, **generation_kwargs) -> List[Dict]:
    """Two views of each method's samples against the baseline's (same conditions, same seeds), and time.

    Args:
        model: any supported family (VAR, Infinity, STAR), unpatched; it is unpatched again on
            return and on error.
        methods: ``[(label, config)]`` as :func:`stagevar.tools.runner.resolve_methods` gives;
            the first must be the baseline (:data:`~stagevar.tools.runner.BASELINE`).
        conditions: one per sample, as the family's ``condition_kwargs`` takes them (class labels,
            or prompts with ``encode``); default, for a class-conditional model, ``per_class``
            samples of every class.
        classifier: judges the full-resolution image (texture view); its penultimate features
            give the Fréchet distance unless ``feature_fn`` is given.
        semantic_classifier: judges colours and coarse layout (semantic view), e.g. a
            :class:`CropClassifier` with ``downsample`` > 1.
        feature_fn: ``(B, 3, H, W)`` images in [0, 1] -> ``(B, F)`` features (a CLIP or DINO
            embedding, say) for the Fréchet and per-sample feature distances.
        targets: the class each sample should show; default the conditions when they are class
            labels. Without targets (or without a classifier) the consistency figures are None.
        encode: prompts -> the call's text condition (Infinity, STAR).
        batch: samples per generation call; batch ``i`` (from sample ``s``) uses ``g_seed = seed + s``.
        lowpass_factor: the block size of the low band (default: an 8-block-high grid, ``H // 8``).
        generation_kwargs: the other arguments of every generation call (``cfg``, ``top_p``, ...).

    Returns:
        One dict per method. Semantic / layout view: ``semantic_consistency`` with its paired
        ``semantic_consistency_change`` / ``semantic_change_se`` / ``semantic_lost`` /
        ``semantic_gained``, ``semantic_fd_to_baseline`` (in its features) and ``lowfreq_psnr``
        (``_se``: over samples). Texture / fidelity view: ``class_consistency``,
        ``consistency_change``, ``change_se``, ``lost``, ``gained``, ``fd_to_baseline``,
        ``feature_distance`` (mean 1 - cosine to the same seed's baseline
        features), ``psnr`` and ``ssim`` (each with ``_se``). Also ``method``, ``n``, ``seconds``,
        ``speedup``, ``lowpass_factor``. Identical images score PSNR 100.

    Methods are interleaved batch by batch (each batch is generated under every method before the
    next), so the time ratios share the machine's conditions. The change in a consistency is
    paired (the same samples under both): its standard error comes from the samples that flipped.
    """
    where = "stagevar.quality.evaluate"
    methods = _args.items(where, "methods", methods, "(label, config) pairs, the baseline first")
    if not all(isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], str) for m in methods):
        raise ValueError(f"{where}: methods must be (label, config) pairs, as stagevar.tools.runner.resolve_methods "
                         f"gives them; got {str(methods)[:120]}")
    if methods[0][1] is not BASELINE:
        raise ValueError("the first method must be the unpatched baseline")
    for name, clf in (("classifier", classifier), ("semantic_classifier", semantic_classifier)):
        if clf is not None and not (callable(clf) and callable(getattr(clf, "features", None))):
            raise ValueError(f"{where}: {name} must be a classifier with .features (a CropClassifier), or None")
    _args.function(where, "feature_fn", feature_fn, "a function of (B, 3, H, W) images in [0, 1] to (B, F) features")
    _args.function(where, "encode", encode, "a function of prompts to the model's text condition")
    per_class, batch = _args.whole(where, "per_class", per_class), _args.whole(where, "batch", batch)
    seed = _args.whole(where, "seed", seed, minimum=0)
    lowpass_factor = _args.optional_whole(where, "lowpass_factor", lowpass_factor)
    conditions, targets = (v.tolist() if torch.is_tensor(v) else v for v in (conditions, targets))
    if conditions is not None:
        conditions = _args.items(where, "conditions", conditions, "class labels or prompts")
    if targets is not None:
        targets = [_args.whole(where, f"targets[{i}]", t, minimum=0)
                   for i, t in enumerate(_args.items(where, "targets", targets, "class indices"))]
    adapter = adapter_for(model)
    if conditions is None:
        if not hasattr(model, "num_classes"):
            raise ValueError("pass conditions (e.g. prompts, with encode=) for a model that is not class-conditional")
        conditions = [c for c in range(model.num_classes) for _ in range(per_class)]
    conditions = list(conditions)
    if targets is None and all(isinstance(c, numbers.Integral) for c in conditions):
        targets = conditions
    target = None if targets is None else torch.as_tensor(list(targets))
    if target is not None and len(target) != len(conditions):
        raise ValueError(f"{len(target)} targets for {len(conditions)} conditions")
    batches = [dict(generation_kwargs, g_seed=seed + i, **adapter.condition_kwargs(conditions[i:i + batch], encode))
               for i in range(0, len(conditions), batch)]
    parts: List[Dict[int, torch.Tensor]] = [{} for _ in methods]

    def keep(rec, out):
        parts[rec.arm][rec.batch] = adapter.images_of(out).float().cpu()

    result = run_interleaved(model, [Arm(label, config) for label, config in methods], batches, rounds=1, warmup=0,
                             on_call=keep)
    images = [torch.cat([p[b] for b in range(len(batches))]) for p in parts]
    factor = lowpass_factor or max(1, images[0].shape[-2] // 8)
    judged = target is not None

    def chunked(fn: Callable[[torch.Tensor], torch.Tensor], img: torch.Tensor) -> torch.Tensor:
        return torch.cat([fn(img[i:i + batch]) for i in range(0, len(img), batch)])

    def features(img: torch.Tensor) -> Optional[torch.Tensor]:
        if feature_fn is not None:
            return chunked(feature_fn, img).float()
        return None if classifier is None else chunked(classifier.features, img)

    def correct(clf: Optional[CropClassifier], img: torch.Tensor) -> Optional[torch.Tensor]:
        return chunked(clf, img).argmax(-1) == target if clf is not None and judged else None

    rows = []
    with torch.no_grad():
        base_img = images[0]
        base_feat = features(base_img)
        base_ok, base_sem = correct(classifier, base_img), correct(semantic_classifier, base_img)
        base_sem_feat = None if semantic_classifier is None else chunked(semantic_classifier.features, base_img)
        for m, ((label, _), img) in enumerate(zip(methods, images)):
            feat = features(img)
            row = dict(method=label, n=len(img), seconds=sum(r.wall_s for r in result.of(m)), lowpass_factor=factor)
            row.update(_change("semantic_", base_sem, correct(semantic_classifier, img)))
            row.update(semantic_fd_to_baseline=None if semantic_classifier is None or len(img) < 2 else
                       frechet_distance(chunked(semantic_classifier.features, img), base_sem_feat))
            row.update(_with_se("lowfreq_psnr", lowfreq_psnr(img, base_img, factor)))
            texture = _change("", base_ok, correct(classifier, img))
            row.update(class_consistency=texture.pop("consistency"), **texture)
            row.update(fd_to_baseline=None if feat is None or len(img) < 2 else frechet_distance(feat, base_feat))
            row.update(_with_se("feature_distance", feature_distance(feat, base_feat)) if feat is not None
                       else dict(feature_distance=None, feature_distance_se=None))
            row.update(_with_se("psnr", psnr(img, base_img)))
            row.update(_with_se("ssim", ssim(img, base_img)))
            row["speedup"] = rows[0]["seconds"] / row["seconds"] if rows else 1.0
            rows.append(row)
    return rows


def bundled_judges(model) -> Dict[str, CropClassifier]:
    """``{"semantic": ..., "texture": ...}``: the independent classifiers shipped with the bundled trained
    model, for a model drawing its classes (``model.class_names``, set by
    :func:`stagevar.models.load_pretrained`, equal to the bundled checkpoint's); empty for any other model."""
    from ..models.pretrained import BUNDLED, BUNDLED_CLASSIFIERS, BUNDLED_SEMANTIC_CLASSIFIERS, class_names_of

    names = getattr(model, "class_names", None)
    paths = {"semantic": BUNDLED_SEMANTIC_CLASSIFIERS["stagevar-tiny-var"],
             "texture": BUNDLED_CLASSIFIERS["stagevar-tiny-var"]}
    if not names or not all(os.path.exists(p) for p in [BUNDLED["stagevar-tiny-var"], *paths.values()]):
        return {}
    if list(names) != class_names_of(BUNDLED["stagevar-tiny-var"]):  # other classes: these judges do not apply
        return {}
    return {view: load_classifier(p, len(names)) for view, p in paths.items()}


def consistency(classifier: Callable[[torch.Tensor], torch.Tensor], img: torch.Tensor, targets: torch.Tensor) -> float:
    """The share of ``img`` ``(N, 3, H, W)`` in [0, 1] that ``classifier`` assigns to ``targets`` ``(N,)``.

    Runs where the classifier's weights are (the bundled judges load on the CPU; images may come
    from a model on a GPU)."""
    params = classifier.parameters() if isinstance(classifier, nn.Module) else iter(())
    device = next(params, img).device
    with torch.no_grad():
        return float((classifier(img.float().to(device)).argmax(-1).cpu() == torch.as_tensor(targets).cpu()).float().mean())


def consistencies(judges: Dict[str, Callable[[torch.Tensor], torch.Tensor]], img: torch.Tensor,
                  targets: Any) -> Dict[str, float]:
    """:func:`consistency` under each judge (``{view: classifier}``, e.g. :func:`bundled_judges`)."""
    return {view: consistency(clf, img, targets) for view, clf in judges.items()}


def load_classifier(path: str, num_classes: int) -> CropClassifier:
    """A :class:`CropClassifier` saved by :func:`save_classifier` (its width and ``downsample`` are in the file's metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    clf = CropClassifier(num_classes, width=int(meta.get("width", 32)), downsample=int(meta.get("downsample", 1)))
    clf.load_state_dict(load_file(path))
    return clf.eval()


def save_classifier(clf: CropClassifier, path: str) -> None:
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, path,
              metadata={"width": str(clf.fc.in_features // 4), "downsample": str(clf.downsample)})


def _fmt(value: Optional[float], spec: str, width: int) -> str:
    return "-".rjust(width) if value is None else format(value, spec).rjust(width)


def _db(value: Optional[float]) -> Optional[float]:
    return None if value is None else min(value, 99.9)


def format_rows(rows: List[Dict], title: Optional[str] = None) -> str:
    """The rows of :func:`evaluate` as a table: the semantic / layout view, then the texture / fidelity view."""
    lines = [title] if title else []
    lines.append(f"{'':<30} {'':>8} {'':>8} | {'semantic / layout':<44} | texture / fidelity")
    lines.append(f"{'method':<30} {'time s':>8} {'speedup':>8} | {'cons.':>5} {'change':>7} {'+-SE':>5} "
                 f"{'lost/gained':>11} {'LF-PSNR':>7} {'+-SE':>4} | {'cons.':>5} {'change':>7} {'+-SE':>5} "
                 f"{'lost/gained':>11} {'FD':>7} {'PSNR':>5} {'+-SE':>4} {'SSIM':>5} {'+-SE':>5}")
    for r in rows:
        def view(p: str, cons: str) -> str:
            flips = "-" if r[p + "lost"] is None else f"{r[p + 'lost']}/{r[p + 'gained']}"
            return (f"{_fmt(r[cons], '.3f', 5)} {_fmt(r[p + 'consistency_change'], '+.3f', 7)} "
                    f"{_fmt(r[p + 'change_se'], '.3f', 5)} {flips:>11}")

        lines.append(f"{r['method']:<30} {r['seconds']:>8.1f} {r['speedup']:>7.2f}x | "
                     f"{view('semantic_', 'semantic_consistency')} {_fmt(_db(r['lowfreq_psnr']), '.1f', 7)} "
                     f"{_fmt(r['lowfreq_psnr_se'], '.1f', 4)} | {view('', 'class_consistency')} "
                     f"{_fmt(r['fd_to_baseline'], '.3f', 7)} {_fmt(_db(r['psnr']), '.1f', 5)} {_fmt(r['psnr_se'], '.1f', 4)} "
                     f"{_fmt(r['ssim'], '.3f', 5)} {_fmt(r['ssim_se'], '.3f', 5)}")
    return "\n".join(lines)
