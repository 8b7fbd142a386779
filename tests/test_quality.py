"""Quality metrics: Fréchet distance, classifier, and the evaluation loop on a tiny model."""
import pytest
import torch

import stagevar
from stagevar import StageVARConfig
from stagevar.models import reference_var
from stagevar.quality import CropClassifier, evaluate, format_rows, train_classifier


def test_classifier_learns_colours():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    x = torch.rand(300, 3, 16, 16, generator=g) * 0.3
    x[torch.arange(300), y] += 0.6  # class = dominant channel
    clf = train_classifier(x, y, 3, steps=150, seed=0)
    with torch.no_grad():
        assert (clf(x).argmax(-1) == y).float().mean() > 0.9


def test_evaluate_rows():
    var = reference_var("tiny")
    clf = CropClassifier(var.num_classes).eval()
    methods = [("baseline", None), ("t", StageVARConfig(refine_start=-2, rank_ratio=0.3, name="t"))]
    rows = evaluate(var, clf, methods, per_class=1, cfg=2.0)
    assert [r["method"] for r in rows] == ["baseline", "t"]
    assert rows[0]["consistency_change"] == 0 and abs(rows[0]["fd_to_baseline"]) < 1e-6 and rows[0]["psnr"] == 100.0
    assert 0 <= rows[1]["class_consistency"] <= 1 and rows[1]["psnr"] < 100
    assert "class cons." in format_rows(rows)


def test_evaluate_interleaves_without_leaking_state():
    """Methods alternate batch by batch; a batch generated right after an accelerated one must
    still match the unpatched call bit for bit (the "none" preset runs stagevar's loop unchanged)."""
    from stagevar.presets import preset

    var = reference_var("tiny")
    clf = CropClassifier(var.num_classes).eval()
    methods = [("baseline", None), ("lowrank", StageVARConfig(refine_start=-2, rank_ratio=0.3, name="lowrank")),
               ("none", preset("none"))]
    rows = evaluate(var, clf, methods, per_class=2, batch=3, cfg=2.0)
    assert rows[2]["psnr"] == 100.0 and rows[2]["lost"] == rows[2]["gained"] == 0
    assert rows[1]["psnr"] < 100.0 and not stagevar.is_accelerated(var)


def test_evaluate_failure_leaves_the_model_unpatched(monkeypatch):
    from stagevar.engine import Engine

    var = reference_var("tiny")
    clf = CropClassifier(var.num_classes).eval()

    def boom(*a, **k):
        raise RuntimeError("unit failed")

    monkeypatch.setattr(Engine, "_lowrank_unit", boom)
    methods = [("baseline", None), ("lowrank", StageVARConfig(refine_start=-2, rank_ratio=0.3, name="lowrank"))]
    with pytest.raises(RuntimeError, match="unit failed"):
        evaluate(var, clf, methods, per_class=1, cfg=2.0)
    assert not stagevar.is_accelerated(var)
    var.autoregressive_infer_cfg(B=1, label_B=torch.tensor([0]), g_seed=0, cfg=2.0)
