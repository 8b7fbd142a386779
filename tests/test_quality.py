"""Quality metrics: Fréchet distance, classifier, and the evaluation loop on a tiny model."""
import torch

from stagevar import StageVARConfig
from stagevar.models import reference_var
from stagevar.quality import CropClassifier, evaluate, format_rows, frechet_distance, train_classifier


def test_frechet_distance_of_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g)
    b = torch.randn(4000, 3, generator=g) + torch.tensor([2.0, 0.0, 0.0])
    assert abs(frechet_distance(a, a)) < 1e-6
    assert abs(frechet_distance(a, b) - 4.0) < 0.3  # |mu|^2 = 4, same covariance
    c = torch.randn(4000, 3, generator=g) * 2  # var 4: trace term 3 * (1 + 4 - 2*2) = 3
    assert abs(frechet_distance(a, c) - 3.0) < 0.4


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
