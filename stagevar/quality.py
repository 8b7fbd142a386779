"""Quality of accelerated samples on a trained class-conditional model.

The analogue of GenEval's object check for the trained reference VAR: an independent classifier,
trained on the same photograph crops, tells which class a generated image shows.

- **class consistency**: the fraction of samples of class ``c`` the classifier labels ``c``;
- **Fréchet distance** between the baseline and accelerated sample sets in the classifier's
  penultimate feature space (same seeds, same classes);
- **PSNR / SSIM** of each accelerated sample against the baseline sample of the same seed.

Every method draws the same classes with the same seeds, so the change in class consistency is a
paired difference: its standard error comes from the samples that flipped (correct under the
baseline and wrong under the method, or the reverse), as in McNemar's test.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .adapters import adapter_for
from .methods import Arm, run_interleaved
from .metrics import frechet_distance, paired_change_stats, psnr, ssim


class CropClassifier(nn.Module):
    """A small CNN: ``(B, 3, H, W)`` images in [0, 1] -> class logits; ``features`` gives the penultimate layer."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(4 * w, 4 * w), nn.ReLU())
        self.fc = nn.Linear(4 * w, num_classes)

    def features(self, img: torch.Tensor) -> torch.Tensor:
        return self.body(img * 2 - 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(img))


def train_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int = 1500, seed: int = 0,
                     batch: int = 64) -> CropClassifier:
    """Train :class:`CropClassifier` on images ``x`` (``(N, 3, H, W)`` in [0, 1]) with labels ``y``.

    Light augmentation (flips, small brightness jitter, 1-2 px shifts) keeps it from keying on
    exact pixels.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = CropClassifier(num_classes)
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


def evaluate(var, classifier: CropClassifier, methods, per_class: int = 8, seed: int = 0, batch: int = 16,
             **generation_kwargs) -> List[Dict]:
    """Class consistency, FD to the baseline set, PSNR/SSIM to the baseline and time, per method.

    ``methods``: ``[(label, config or None)]`` as :func:`stagevar.methods.resolve_methods` gives;
    the first must be the baseline (None). Every method generates the same classes with the same
    seeds. Methods are interleaved batch by batch (each batch of classes is generated under every
    method before the next), so the time ratios share the machine's conditions. The model must be
    unpatched; it is unpatched again on return and on error.
    """
    if methods[0][1] is not None:
        raise ValueError("the first method must be the unpatched baseline")
    adapter = adapter_for(var)
    classes = [c for c in range(var.num_classes) for _ in range(per_class)]
    target = torch.tensor(classes)
    batches = [dict(generation_kwargs, g_seed=seed + i, **adapter.condition_kwargs(classes[i:i + batch]))
               for i in range(0, len(classes), batch)]
    images: List[List[torch.Tensor]] = [[] for _ in methods]

    def keep(rec, out):
        images[rec.arm].append(adapter.images_of(out).float().cpu())

    result = run_interleaved(var, [Arm(label, cfg) for label, cfg in methods], batches, rounds=1, warmup=0,
                             on_call=keep)
    seconds = [sum(r.wall_s for r in result.of(m)) for m in range(len(methods))]
    rows, base_img, base_feat, base_ok = [], None, None, None
    with torch.no_grad():
        for (label, _), parts, secs in zip(methods, images, seconds):
            img = torch.cat(parts)
            feats = classifier.features(img.float())
            ok = classifier.fc(feats).argmax(-1) == target
            if base_img is None:
                base_img, base_feat, base_ok = img, feats, ok
            row = dict(method=label, seconds=secs, class_consistency=float(ok.float().mean()))
            row.update(paired_change_stats(base_ok, ok))
            row.update(fd_to_baseline=frechet_distance(feats, base_feat), psnr=float(psnr(img, base_img).mean()),
                       ssim=float(ssim(img, base_img).mean()))
            rows.append(row)
    base = rows[0]
    for r in rows:
        r["speedup"] = base["seconds"] / r["seconds"]
        r["consistency_change"] = r["class_consistency"] - base["class_consistency"]
    return rows


def load_classifier(path: str, num_classes: int) -> CropClassifier:
    from safetensors.torch import load_file

    clf = CropClassifier(num_classes)
    clf.load_state_dict(load_file(path))
    return clf.eval()


def save_classifier(clf: CropClassifier, path: str) -> None:
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, path)


def format_rows(rows: List[Dict], title: Optional[str] = None) -> str:
    lines = [title] if title else []
    lines.append(f"{'method':<30} {'time s':>8} {'speedup':>8} {'class cons.':>11} {'change':>8} {'+-SE':>6} "
                 f"{'lost/gained':>11} {'FD':>8} {'PSNR':>6} {'SSIM':>6}")
    for r in rows:
        lines.append(f"{r['method']:<30} {r['seconds']:>8.1f} {r['speedup']:>7.2f}x {r['class_consistency']:>11.3f} "
                     f"{r['consistency_change']:>+8.3f} {r['change_se']:>6.3f} {r['lost']:>5}/{r['gained']:<5} "
                     f"{r['fd_to_baseline']:>8.3f} {min(r['psnr'], 99.9):>6.1f} {r['ssim']:>6.3f}")
    return "\n".join(lines)
