"""The demo (``stagevar demo``): the unpatched model and one or more configs, the same seeds,
timed interleaved, compared (PSNR, SSIM and, for the bundled trained model, two independent
judges), and drawn as one labelled figure."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..adapters import adapter_for
from ..report import SKIPPING_LABEL, Report
from .figures import condition_labels, image_grid_figure, method_label
from .metrics import psnr, ssim
from .quality import bundled_judges, consistencies
from .runner import BASELINE, MODEL_DEFAULT, Arm, run_interleaved


@dataclass
class DemoRow:
    """One config's row: its report, end-to-end median against the baseline's, fidelity and, with
    judges, class consistency per view (``baseline_consistency``: the baseline row's)."""

    name: str
    report: Report
    baseline_ms: float
    ms: float
    psnr: float
    ssim: float
    consistency: Dict[str, float] = field(default_factory=dict)
    baseline_consistency: Dict[str, float] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.baseline_ms / self.ms


@dataclass
class DemoResult:
    rows: List[DemoRow]
    backend: str  # what drew the figure (matplotlib, PIL, or a plain PNG)


def demo(model: Any, configs: Sequence[Any], call_kwargs: dict, conditions: Sequence, *, repeats: int, out: str,
         title: str, trained: bool) -> DemoResult:
    """Run the demo and write its figure to ``out``.

    Args:
        model: a supported model, unpatched (unpatched again on return).
        configs: per accelerated row a :class:`~stagevar.StageVARConfig` or
            :data:`~stagevar.tools.runner.MODEL_DEFAULT`.
        call_kwargs: the generation call, conditions included (the same seeds in every row).
        conditions: the call's class labels or prompts (the figure's column labels).
        repeats: timed interleaved rounds; the speedups are end-to-end medians.
        title: the figure's title.
        trained: the model has trained weights (else the figure says the differences mean nothing).
    """
    adapter = adapter_for(model)
    images: Dict[int, torch.Tensor] = {}
    reports: Dict[int, Report] = {}

    def keep(rec, output):  # the last round's images and reports
        images[rec.arm], reports[rec.arm] = adapter.images_of(output).float().cpu(), rec.report

    arms = [Arm("baseline", BASELINE)] + [Arm("default" if c is MODEL_DEFAULT else c.name, c) for c in configs]
    result = run_interleaved(model, arms, [call_kwargs], rounds=repeats, warmup=1, on_call=keep)
    judges = bundled_judges(model)  # semantic (block means) and texture (full image) classifiers
    target = torch.tensor(list(conditions)) if judges else None  # judges exist for class-conditional models only
    base_img = images[0]
    b = statistics.median(r.wall_s for r in result.of(0)) * 1e3
    cb = consistencies(judges, base_img, target)
    rows = []
    for i in range(1, len(arms)):
        img = images[i]
        rows.append(DemoRow(reports[i].config_name, reports[i], b, statistics.median(r.wall_s for r in result.of(i)) * 1e3,
                            float(psnr(img, base_img).mean()), float(ssim(img, base_img).mean()),
                            consistencies(judges, img, target), cb))
    labels = [method_label("baseline", wall_ms=b, consistency=cb)]
    labels += [method_label(r.name, r.speedup, r.psnr, r.ssim, r.consistency, cb,
                            skipping=SKIPPING_LABEL if r.report.skipping else "") for r in rows]
    note = (f"Rows: the unpatched model, then one per config, same seeds. Speedup: end-to-end median of "
            f"{repeats} call(s) against the unpatched model. PSNR, SSIM: to the baseline image of the same "
            f"seed (mean over the row).")
    if judges:
        note += (" Cons.: the share of the row an independent classifier assigns to the class asked for -- semantic: "
                 "one that sees only 8x8 block means (class, colours, layout); texture: one that sees the full image "
                 "(one image per class: a rough sign; see BENCHMARKS.md for the full evaluation).")
    if not trained:
        note += " Random weights: these differences say nothing about quality."
    backend = image_grid_figure([base_img] + [images[i] for i in range(1, len(arms))], labels,
                                condition_labels(list(conditions), getattr(model, "class_names", None)), out,
                                title=title, note=note)
    return DemoResult(rows, backend)


def demo_configs(model: Any, given: Optional[List[Any]]) -> List[Any]:
    """The demo's rows: the configs ``given``, or the model's default (the config it carries, else
    its family preset) -- for a model that carries a config, the family's preset (the paper's
    recipe) first and then the carried one."""
    if given:
        return list(given)
    if getattr(model, "stagevar_config", None) is not None:
        from ..presets import preset

        return [preset(adapter_for(model).default_preset), MODEL_DEFAULT]
    return [MODEL_DEFAULT]


__all__ = ["demo", "demo_configs", "DemoResult", "DemoRow"]
